"""Which fields of the CLI's `--json` output are token amounts, and in which unit.

The library returns amounts as integers in base units (wei, credit micro-units), which is what
the contracts count in. `--json` prints each as `{"value": "<exact decimal>", "unit": "<unit>"}`
(`underbid.protocol.units.amount_json`), so a script never meets an integer above 2^53 or has to
know a token's decimals. A field is found by its key; a command whose key means another unit
passes overrides, by key or by dotted path (`bme.price`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from underbid.protocol.units import Unit, amount_json

#: Keys that are amounts wherever they appear in `--json` output.
AMOUNT_KEYS: Mapping[str, Unit] = {
    # credits (UBC): balances, escrow, lease payments
    **dict.fromkeys((
        "credits", "escrow_free", "escrow_locked", "credits_minted", "credits_burned", "credit_supply",
        "min_mint_credits", "total_credits_minted", "total_credits_burned", "deposited", "pending_withdrawal",
        "replaced", "requested", "withdrawn", "available", "free", "locked", "claimed", "paid_to_provider",
        "refunded", "buyer_refund", "accrued", "claimable", "cost", "paid", "remaining", "max_cost", "claims",
    ), Unit.UBC),
    # UBT: balances, stake and its slashing, the BME's totals
    **dict.fromkeys((
        "ubt", "stake", "staked", "unbonding", "stake_per_unit", "collateral", "collateral_unlocked", "slashed",
        "burned", "to_buyer", "to_reporter", "ubt_burned", "ubt_minted", "net_minted_in_window", "net_ubt_burned",
        "redeem_cap", "redeemable_ubt", "total_slashed_burned", "total_ubt_burned", "total_ubt_minted",
        "ubt_supply", "bond", "min_bond", "redemptions",
    ), Unit.UBT),
    "eth": Unit.ETH,
    # prices per unit-hour (orders, bids, leases, clearing prices per market)
    **dict.fromkeys(("price", "max_price", "prices"), Unit.PRICE),
}

#: Overrides for the oracle's price (`bme`, `credits mint/redeem`, `status`).
ORACLE_PRICE: Mapping[str, Unit] = {"price": Unit.USD_PER_UBT, "bme.price": Unit.USD_PER_UBT}
#: Overrides for a provider's stake (`provider show/stake/unstake/withdraw`, `matcher withdraw`).
STAKE: Mapping[str, Unit] = dict.fromkeys(("available", "free", "locked", "withdrawn", "announced"), Unit.UBT)


def with_amounts(data: Any, overrides: Mapping[str, Unit] | None = None) -> Any:
    """A copy of `data` with every amount field (an int under a known key) as `amount_json`.

    A dict under an amount key whose values are ints (clearing prices by market, claims by
    provider) has each value converted.
    """
    return _convert(data, (), overrides or {})


def _unit(path: tuple[str, ...], overrides: Mapping[str, Unit]) -> Unit | None:
    dotted = ".".join(path)
    for key in (dotted, path[-1]):
        if key in overrides:
            return overrides[key]
    return AMOUNT_KEYS.get(path[-1])


def _convert(value: Any, path: tuple[str, ...], overrides: Mapping[str, Unit]) -> Any:
    if isinstance(value, dict):
        unit = _unit(path, overrides) if path else None
        if unit is not None and value and all(_is_int(v) for v in value.values()):
            return {key: amount_json(v, unit) for key, v in value.items()}
        return {key: _convert(v, (*path, str(key)), overrides) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_convert(v, path, overrides) for v in value]
    if path and _is_int(value):
        unit = _unit(path, overrides)
        if unit is not None:
            return amount_json(value, unit)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
