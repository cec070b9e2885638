"""Human amounts: credits (6 decimals) and UBT (18 decimals), parsed as Decimal, never float."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from enum import StrEnum

CREDIT_DECIMALS = 6
UBT_DECIMALS = 18
#: The oracle's USD/UBT price has 8 decimals (as Chainlink's USD feeds).
ORACLE_PRICE_DECIMALS = 8


class Unit(StrEnum):
    """The unit an on-chain integer amount is counted in, with its decimals."""

    UBT = "UBT"
    UBC = "UBC"
    PRICE = "UBC/unit-hour"
    ETH = "ETH"
    USD_PER_UBT = "USD/UBT"

    @property
    def decimals(self) -> int:
        return {Unit.UBT: UBT_DECIMALS, Unit.ETH: 18, Unit.UBC: CREDIT_DECIMALS, Unit.PRICE: CREDIT_DECIMALS,
                Unit.USD_PER_UBT: ORACLE_PRICE_DECIMALS}[self]


class AmountError(ValueError):
    """An amount that is not a valid non-negative decimal with at most the token's decimals."""


def parse_amount(text: str | int | Decimal, decimals: int, *, allow_zero: bool = False, what: str = "amount") -> int:
    """`"1.25"` with 6 decimals -> 1_250_000. Raises AmountError with a one-line reason."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise AmountError(f"{what} {text!r} is not a number") from None
    if not value.is_finite():
        raise AmountError(f"{what} {text!r} is not a finite number")
    if value < 0:
        raise AmountError(f"{what} must not be negative, got {text}")
    if value == 0 and not allow_zero:
        raise AmountError(f"{what} must be greater than zero")
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise AmountError(f"{what} {text} has more than {decimals} decimals")
    return int(scaled)


class DurationError(ValueError):
    """A duration that is not a positive whole number of seconds such as `90s`, `30m`, `2h`, `1.5d`."""


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int, default_unit: str = "h", *, maximum: int = 2**32 - 1) -> int:
    """`"90s"`, `"30m"`, `"2h"`, `"1.5d"` -> seconds; a bare number is in `default_unit`. An int is
    taken as seconds. Raises DurationError with a one-line reason."""
    if isinstance(text, int):
        seconds = Decimal(text)
    else:
        value = str(text).strip().lower()
        unit = value[-1] if value and value[-1] in DURATION_UNITS else default_unit
        number = value[:-1] if value and value[-1] in DURATION_UNITS else value
        try:
            amount = Decimal(number)
        except InvalidOperation:
            raise DurationError(f"{text!r} is not a duration such as 90s, 30m, 2h or 1.5d") from None
        if not amount.is_finite():
            raise DurationError(f"{text!r} is not a duration such as 90s, 30m, 2h or 1.5d")
        seconds = amount * DURATION_UNITS[unit]
    if seconds <= 0:
        raise DurationError(f"duration must be greater than zero, got {text}")
    if seconds != seconds.to_integral_value():
        raise DurationError(f"duration {text} is not a whole number of seconds")
    if seconds > maximum:
        raise DurationError(f"duration {text} is too long")
    return int(seconds)


def format_amount(base_units: int, decimals: int, places: int | None = None) -> str:
    """1_250_000 with 6 decimals -> "1.25" (trailing zeros trimmed unless `places` is given)."""
    value = Decimal(base_units).scaleb(-decimals)
    if places is not None:
        return f"{value:,.{places}f}"
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_credits(base_units: int) -> str:
    return format_amount(base_units, CREDIT_DECIMALS)


def format_ubt(wei: int) -> str:
    return format_amount(wei, UBT_DECIMALS)


def amount_json(base_units: int, unit: Unit) -> dict[str, str]:
    """`{"value": "199.5", "unit": "UBC"}`: exact (a decimal string, not a float), with its unit.

    NOTE: JSON numbers above 2^53 lose digits in most parsers (JavaScript, jq), and wei amounts
    are far above it; a decimal string keeps every digit.
    """
    return {"value": format_amount(base_units, unit.decimals), "unit": unit.value}


def base_units(amount: dict[str, str]) -> int:
    """The inverse of `amount_json`: base units of `{"value": ..., "unit": ...}`."""
    return parse_amount(amount["value"], Unit(amount["unit"]).decimals, allow_zero=True, what=amount["unit"])
