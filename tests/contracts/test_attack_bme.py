"""The BME sandwich (issue 9, finding 7), played by an attacker against the real contracts.

The attacker knows an oracle update is coming (the updater's `setPrice` waits in the mempool, or
the market moved and the updater has not posted yet) and wraps it in a round trip through the BME:

- the price falls: mint credits at the old, higher price, then redeem them at the new one;
- the price rises: redeem credits at the old, lower price, then mint them back at the new one.

Every amount below is what the attacker holds before and after; nothing is computed from a model.

Measured on the contracts before the fix (100,000 UBT or UBC, one update one second after the first
leg): mint, -0.5%, redeem: +251.26 UBT (+0.2513%, the finding); mint, -5%, redeem: +5,000 UBT
(+5.0000%); redeem, +5%, mint: +4,737.5 UBC (+4.7375%). The BME now mints at the low and redeems
at the high of the oracle's band (every price in effect over at least the last `priceLag`
seconds), so a round trip whose legs are at most `priceLag` seconds apart loses at least the
spread, whatever is posted in between: these tests assert exactly that.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from ..conftest import UBC, UBT

MAX_UINT = 2**256 - 1
PPM = 1_000_000
BPS = 10_000


def less_the_spread(amount: int, params) -> int:
    """`amount` less the mint spread: the most a round trip may give back."""
    return amount * (BPS - params.mint_spread_bps) // BPS


@pytest.fixture
def attacker(market, ubt, bme, outsider):
    """The outsider with 200,000 UBC minted at the seeded price and 1,000,000 UBT, BME approved."""
    market.mint_credits(outsider, 200_000 * UBC)  # approves exactly what it burns
    market.give_ubt(outsider, 1_000_000 * UBT)
    ubt.approve(bme, MAX_UINT, sender=outsider)
    return outsider


def moved(price: int, ppm: int) -> int:
    """`price` moved by `ppm` parts per million (negative: down)."""
    return price * (PPM + ppm) // PPM


def post_all(chain, oracle, deployer, t: int, prices: list[int], gaps: list[int]) -> int:
    """Posts each of `prices`, `gaps[i]` seconds after the previous block; returns the last time."""
    for price, gap in zip(prices, gaps, strict=True):
        t += gap
        chain.pending_timestamp = t
        oracle.setPrice(price, sender=deployer)
    return t


def mint_then_redeem(chain, oracle, bme, deployer, attacker, ubt_in, prices, gaps, last_gap=1) -> int:
    """Mints credits with `ubt_in` UBT, lets `prices` land, redeems every credit it got; returns the UBT back."""
    t = chain.blocks.head.timestamp + 1
    chain.pending_timestamp = t
    credits = bme.mintCredits(ubt_in, 0, sender=attacker).return_value
    t = post_all(chain, oracle, deployer, t, prices, gaps)
    chain.pending_timestamp = t + last_gap
    return bme.redeem(credits, 0, sender=attacker).return_value


def redeem_then_mint(chain, oracle, bme, deployer, attacker, credits_in, prices, gaps, last_gap=1) -> int:
    """Redeems `credits_in`, lets `prices` land, mints credits with every UBT it got; returns the credits back."""
    t = chain.blocks.head.timestamp + 1
    chain.pending_timestamp = t
    ubt_out = bme.redeem(credits_in, 0, sender=attacker).return_value
    t = post_all(chain, oracle, deployer, t, prices, gaps)
    chain.pending_timestamp = t + last_gap
    return bme.mintCredits(ubt_out, 0, sender=attacker).return_value


def gain(before: int, after: int) -> str:
    return f"{after - before:+d} base units = {(after - before) * 100 / before:+.4f}%"


# --------------------------------------------------------------------------------------------
# The sandwich of the finding, and its mirror
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("move_ppm", [-5_000, -50_000, 50_000], ids=["-0.5%", "-5%", "+5%"])
def test_mint_oracle_update_redeem_makes_no_ubt(chain, oracle, ubt, bme, deployer, attacker, params, move_ppm):
    ubt_in = 100_000 * UBT
    before = ubt.balanceOf(attacker)
    back = mint_then_redeem(chain, oracle, bme, deployer, attacker, ubt_in, [moved(params.ubt_price, move_ppm)], [1])
    assert ubt.balanceOf(attacker) == before - ubt_in + back
    assert back <= less_the_spread(ubt_in, params), f"the sandwich made UBT: {gain(ubt_in, back)}"


@pytest.mark.parametrize("move_ppm", [-5_000, -50_000, 50_000], ids=["-0.5%", "-5%", "+5%"])
def test_redeem_oracle_update_mint_makes_no_credits(chain, oracle, credit, bme, deployer, attacker, params, move_ppm):
    credits_in = 100_000 * UBC
    before = credit.balanceOf(attacker)
    back = redeem_then_mint(
        chain, oracle, bme, deployer, attacker, credits_in, [moved(params.ubt_price, move_ppm)], [1]
    )
    assert credit.balanceOf(attacker) == before - credits_in + back
    assert back <= less_the_spread(credits_in, params), f"the sandwich made credits: {gain(credits_in, back)}"


# --------------------------------------------------------------------------------------------
# Property: no round trip around up to three updates of up to 5% each gains (each loses the spread)
# --------------------------------------------------------------------------------------------

moves = st.lists(st.integers(-50_000, 50_000), min_size=1, max_size=3)
# Seconds before each update and before the second leg: four gaps of at most 900 s, so the two
# legs are at most 3,600 s apart.
gaps = st.lists(st.integers(1, 900), min_size=4, max_size=4)


@settings(
    max_examples=14,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate),  # each example is several anvil transactions
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(direction="mint-redeem", move_ppm=[-5_000], gap=[1, 1, 1, 1], amount=100_000)  # the finding
@example(direction="redeem-mint", move_ppm=[50_000], gap=[1, 1, 1, 1], amount=100_000)
@example(direction="mint-redeem", move_ppm=[-50_000, -50_000, -50_000], gap=[900] * 4, amount=100_000)
@example(direction="redeem-mint", move_ppm=[50_000, -50_000, 50_000], gap=[900] * 4, amount=20)
@given(
    direction=st.sampled_from(["mint-redeem", "redeem-mint"]),
    move_ppm=moves,
    gap=gaps,
    amount=st.integers(20, 100_000),  # whole UBT, or whole UBC
)
def test_no_round_trip_around_updates_profits(
    chain, oracle, ubt, credit, bme, deployer, attacker, params, direction, move_ppm, gap, amount
):
    assert sum(gap) <= oracle.priceLag()  # the guarantee's condition: legs at most priceLag apart
    snapshot = chain.snapshot()
    try:
        prices, price = [], params.ubt_price
        for ppm in move_ppm:
            price = moved(price, ppm)
            prices.append(price)
        update_gaps, last_gap = gap[: len(prices)], gap[-1]
        if direction == "mint-redeem":
            ubt_in = amount * UBT + 123_456_789  # a dusty amount
            back = mint_then_redeem(chain, oracle, bme, deployer, attacker, ubt_in, prices, update_gaps, last_gap)
            assert back <= less_the_spread(ubt_in, params), f"mint, {prices}, redeem: {gain(ubt_in, back)}"
        else:
            credits_in = amount * UBC + 1_234
            back = redeem_then_mint(chain, oracle, bme, deployer, attacker, credits_in, prices, update_gaps, last_gap)
            assert back <= less_the_spread(credits_in, params), f"redeem, {prices}, mint: {gain(credits_in, back)}"
    finally:
        chain.restore(snapshot)
