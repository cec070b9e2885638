"""Human amounts: credits (6 decimals) and UBT (18 decimals), parsed as Decimal, never float."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

CREDIT_DECIMALS = 6
UBT_DECIMALS = 18


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
