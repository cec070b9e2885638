"""BurnMintEquilibrium: exact mint/redeem math, guards, running totals, and the redemption breaker.

Every amount is checked against a Python reference of the contract's integer math, and the breaker
against a Python model of its leaky bucket (see `Bucket`). Mints use the low and redemptions the
high of the oracle's price band, checked against its model (`tests/band.py`); the sandwich attack
itself is in `test_attack_bme.py`. Transactions whose timing matters are pinned to an exact block
timestamp with `chain.pending_timestamp`.
"""

import random
from dataclasses import dataclass

import pytest

from ..band import Band
from ..conftest import UBC, UBT
from ..reverts import reverts

BPS = 10_000
SCALE = 10**20  # 10^(18 + 8 - 6): UBT decimals + oracle decimals - credit decimals
ADMIN_ROLE = b"\x00" * 32


def quote_mint(ubt_in: int, price: int, spread_bps: int = 25) -> int:
    """Credits for `ubt_in` UBT wei at `price` (8 decimals), minus the spread, rounded down."""
    return ubt_in * price * (BPS - spread_bps) // (SCALE * BPS)


def quote_redeem(credits_in: int, price: int) -> int:
    """UBT wei for `credits_in` credit base units at `price`, rounded down."""
    return credits_in * SCALE // price


@dataclass
class Bucket:
    """The breaker's leaky bucket: rises by redeemed UBT, falls by burned UBT, drains cap/window per second."""

    cap: int
    window: int
    net: int = 0
    at: int = 0

    def level(self, t: int) -> int:
        drained = (t - self.at) * self.cap // self.window
        return max(self.net - drained, 0)

    def redeemable(self, t: int) -> int:
        return max(self.cap - self.level(t), 0)

    def redeem(self, t: int, ubt_out: int) -> None:
        level = self.level(t)
        assert level + ubt_out <= self.cap
        self.net, self.at = level + ubt_out, t

    def mint(self, t: int, ubt_in: int) -> None:
        self.net, self.at = max(self.level(t) - ubt_in, 0), t

    def set_params(self, t: int, cap: int, window: int) -> None:
        self.net, self.at = self.level(t), t
        self.cap, self.window = cap, window


def at(chain, t: int) -> None:
    """The next transaction is mined at timestamp `t` (which may equal the head's)."""
    chain.pending_timestamp = t


def settle_price(chain, oracle, deployer, price: int, lag: int) -> None:
    """Makes `price` the whole band: posts it, then again two band periods later."""
    t = chain.blocks.head.timestamp + 1
    at(chain, t)
    oracle.setPrice(price, sender=deployer)
    at(chain, t + 2 * lag)
    oracle.setPrice(price, sender=deployer)
    assert tuple(oracle.priceBand()) == (price, price)


def assert_bucket(bme, bucket: Bucket, t: int) -> None:
    """The contract's views (read at the head, whose timestamp is `t`) match the model."""
    assert bme.netMintedInWindow() == bucket.level(t)
    assert bme.redeemableUbt() == bucket.redeemable(t)


@pytest.fixture
def holder(market, ubt, bme, buyers):
    """buyers[0] with 100,000 UBT, BME approved for all of it."""
    market.give_ubt(buyers[0], 100_000 * UBT)
    ubt.approve(bme, 2**256 - 1, sender=buyers[0])
    return buyers[0]


@pytest.fixture
def redeemer(market, buyers):
    """buyers[1] with at least 2,000 UBC."""
    market.mint_credits(buyers[1], 2_000 * UBC)
    return buyers[1]


# --------------------------------------------------------------------------------------------
# Exact math
# --------------------------------------------------------------------------------------------


def test_quote_functions_match_reference(bme, params):
    rng = random.Random(1234)
    prices = [1, 7, 99_999_999, params.ubt_price, 123_456_789, 3_712_345_678, 10**16, 2**128 - 1]
    for price in prices:
        for _ in range(3):
            ubt_in = rng.randrange(1, 10**30)
            credits_in = rng.randrange(1, 10**18)
            assert bme.quoteMintAt(ubt_in, price) == quote_mint(ubt_in, price, params.mint_spread_bps)
            assert bme.quoteRedeemAt(credits_in, price) == quote_redeem(credits_in, price)
    # The spread is in bps of the credits: 1 UBT at $2 gives 2 UBC minus 0.25%.
    assert bme.quoteMintAt(UBT, 2 * 10**8) == 2 * UBC * (BPS - 25) // BPS == 1_995_000
    assert bme.quoteRedeemAt(2 * UBC, 2 * 10**8) == UBT
    assert bme.quoteMint(UBT) == quote_mint(UBT, params.ubt_price)
    assert bme.quoteRedeem(UBC) == quote_redeem(UBC, params.ubt_price)


@pytest.mark.parametrize(
    ("ubt_in", "price"),
    [
        (6 * UBT + 123_456_789, 2 * 10**8),  # the devnet price, a dusty amount
        (12_345_678_901_234_567_891, 123_456_789),  # $1.23456789
        (60_000 * UBT + 1, 5_000_000),  # $0.05
        (7 * UBT - 1, 3_712_345_678),  # $37.12345678
    ],
)
def test_mint_credits_burns_ubt_at_price_minus_spread(
    chain, oracle, ubt, credit, bme, deployer, holder, ubt_in, price, params
):
    settle_price(chain, oracle, deployer, price, params.oracle_price_lag)
    expected = quote_mint(ubt_in, price, params.mint_spread_bps)
    assert expected >= params.min_mint_credits
    # The spread really is taken, and the result really is rounded down.
    assert expected < ubt_in * price // SCALE
    assert (ubt_in * price * (BPS - params.mint_spread_bps)) % (SCALE * BPS) != 0
    assert bme.quoteMint(ubt_in) == expected

    ubt_supply, credit_supply = ubt.totalSupply(), credit.totalSupply()
    ubt_held = ubt.balanceOf(holder)
    receipt = bme.mintCredits(ubt_in, expected, sender=holder)
    assert receipt.return_value == expected
    assert ubt.balanceOf(holder) == ubt_held - ubt_in
    assert credit.balanceOf(holder) == expected
    assert ubt.totalSupply() == ubt_supply - ubt_in  # burned, not parked in the BME
    assert ubt.balanceOf(bme) == 0
    assert credit.totalSupply() == credit_supply + expected
    [event] = receipt.decode_logs(bme.CreditsMinted)
    assert event.account == holder.address
    assert (event.ubtBurned, event.creditsMinted, event.price) == (ubt_in, expected, price)


@pytest.mark.parametrize(
    ("credits_in", "price"),
    [(123_456_789, 2 * 10**8), (987_654_321, 123_456_789), (10**9 + 1, 3_712_345_678), (77, 5_000_000)],
)
def test_redeem_mints_ubt_at_oracle_price(
    chain, oracle, ubt, credit, bme, deployer, redeemer, credits_in, price, params
):
    settle_price(chain, oracle, deployer, price, params.oracle_price_lag)
    expected = quote_redeem(credits_in, price)
    assert bme.quoteRedeem(credits_in) == expected

    ubt_supply, credit_supply = ubt.totalSupply(), credit.totalSupply()
    held_credits, held_ubt = credit.balanceOf(redeemer), ubt.balanceOf(redeemer)
    receipt = bme.redeem(credits_in, expected, sender=redeemer)
    assert receipt.return_value == expected
    assert credit.balanceOf(redeemer) == held_credits - credits_in
    assert ubt.balanceOf(redeemer) == held_ubt + expected
    assert credit.totalSupply() == credit_supply - credits_in
    assert ubt.totalSupply() == ubt_supply + expected
    [event] = receipt.decode_logs(bme.CreditsRedeemed)
    assert event.account == redeemer.address
    assert (event.creditsBurned, event.ubtMinted, event.price) == (credits_in, expected, price)


def test_round_trip_loses_exactly_the_spread(ubt, credit, bme, holder, params):
    ubt_in = 1_000 * UBT
    before = ubt.balanceOf(holder)
    credits = bme.mintCredits(ubt_in, 0, sender=holder).return_value
    back = bme.redeem(credits, 0, sender=holder).return_value
    assert back == quote_redeem(quote_mint(ubt_in, params.ubt_price), params.ubt_price)
    assert back == ubt_in * (BPS - params.mint_spread_bps) // BPS  # 997.5 UBT: no free round trip
    assert ubt.balanceOf(holder) == before - ubt_in + back
    assert credit.balanceOf(holder) == 0


def test_mint_and_redeem_use_the_band_ends_and_quotes_say_so(
    chain, oracle, ubt, credit, bme, deployer, holder, redeemer, params
):
    lag, p0 = params.oracle_price_lag, params.ubt_price
    t = (chain.blocks.head.timestamp // lag + 3) * lag  # a period start, the seeded price alone since
    band = Band(lag)
    band.post(*reversed(tuple(oracle.lastPosted())))
    ubt_in, credits_in = 1_000 * UBT + 7, 500 * UBC + 7

    def check(t: int, expect_low: int, expect_high: int) -> None:
        low, high = band.ends(t)
        assert (low, high) == (expect_low, expect_high) == tuple(oracle.priceBand())
        mint_quote, redeem_quote = bme.quoteMint(ubt_in), bme.quoteRedeem(credits_in)
        assert mint_quote == quote_mint(ubt_in, low) and redeem_quote == quote_redeem(credits_in, high)
        at(chain, t)
        assert bme.mintCredits(ubt_in, mint_quote, sender=holder).return_value == mint_quote
        at(chain, t)
        assert bme.redeem(credits_in, redeem_quote, sender=redeemer).return_value == redeem_quote

    # -5%, then +3% within the period: mints at the lowest price, redemptions at the highest.
    for offset, price in [(0, p0), (10, p0 * 95 // 100), (20, p0 * 103 // 100)]:
        at(chain, t + offset)
        oracle.setPrice(price, sender=deployer)
        band.post(t + offset, price)
    check(t + 20, p0 * 95 // 100, p0 * 103 // 100)
    # Back to p0 in the next period: the band still holds both moves...
    at(chain, t + lag)
    oracle.setPrice(p0, sender=deployer)
    band.post(t + lag, p0)
    check(t + lag, p0 * 95 // 100, p0 * 103 // 100)
    # ... and two periods after the moves only p0 is left: the round trip loses exactly the spread again.
    at(chain, t + 3 * lag)
    oracle.setPrice(p0, sender=deployer)
    band.post(t + 3 * lag, p0)
    check(t + 3 * lag, p0, p0)


# --------------------------------------------------------------------------------------------
# Guards
# --------------------------------------------------------------------------------------------


def test_mint_below_minimum(bme, credit, holder, params):
    minimum = params.min_mint_credits
    # The least UBT whose credits reach the minimum at the devnet price.
    ubt_min = -(-minimum * SCALE * BPS // (params.ubt_price * (BPS - params.mint_spread_bps)))
    below = quote_mint(ubt_min - 1, params.ubt_price)
    assert below < minimum <= quote_mint(ubt_min, params.ubt_price)

    with reverts(bme.MintBelowMinimum, creditsOut=below, minimum=minimum):
        bme.mintCredits(ubt_min - 1, 0, sender=holder)
    # The minimum is checked before the caller's own bound.
    with reverts(bme.MintBelowMinimum, creditsOut=below, minimum=minimum):
        bme.mintCredits(ubt_min - 1, 10**30, sender=holder)
    with reverts(bme.MintBelowMinimum, creditsOut=0, minimum=minimum):
        bme.mintCredits(1, 0, sender=holder)

    bme.mintCredits(ubt_min, 0, sender=holder)
    assert credit.balanceOf(holder) == quote_mint(ubt_min, params.ubt_price)


def test_mint_slippage(bme, credit, holder, params):
    ubt_in = 50 * UBT + 3
    out = quote_mint(ubt_in, params.ubt_price)
    with reverts(bme.SlippageExceeded, out=out, minOut=out + 1):
        bme.mintCredits(ubt_in, out + 1, sender=holder)
    assert credit.balanceOf(holder) == 0
    assert bme.mintCredits(ubt_in, out, sender=holder).return_value == out


def test_redeem_slippage(bme, ubt, redeemer, params):
    credits_in = 33 * UBC + 7
    out = quote_redeem(credits_in, params.ubt_price)
    with reverts(bme.SlippageExceeded, out=out, minOut=out + 1):
        bme.redeem(credits_in, out + 1, sender=redeemer)
    assert ubt.balanceOf(redeemer) == 0
    assert bme.redeem(credits_in, out, sender=redeemer).return_value == out
    assert ubt.balanceOf(redeemer) == out


def test_zero_amounts(bme, holder, redeemer):
    with reverts(bme.ZeroAmount):
        bme.mintCredits(0, 0, sender=holder)
    with reverts(bme.ZeroAmount):
        bme.redeem(0, 0, sender=redeemer)


def test_mint_needs_ubt_allowance_and_redeem_needs_credits(market, ubt, credit, bme, buyers, redeemer):
    buyer = buyers[2]
    market.give_ubt(buyer, 10 * UBT)
    with reverts(ubt.ERC20InsufficientAllowance, spender=bme, allowance=0, needed=10 * UBT):
        bme.mintCredits(10 * UBT, 0, sender=buyer)
    held = credit.balanceOf(redeemer)
    with reverts(credit.ERC20InsufficientBalance, sender=redeemer, balance=held, needed=held + 1):
        bme.redeem(held + 1, 0, sender=redeemer)


def test_stale_oracle_blocks_mint_and_redeem(chain, oracle, ubt, credit, bme, deployer, holder, redeemer, params):
    max_age = params.oracle_max_age
    posted = chain.blocks.head.timestamp + 1
    at(chain, posted)
    oracle.setPrice(params.ubt_price, sender=deployer)

    # At exactly max age the price is still usable.
    at(chain, posted + max_age)
    bme.mintCredits(10 * UBT, 0, sender=holder)
    at(chain, posted + max_age)
    bme.redeem(10 * UBC, 0, sender=redeemer)

    chain.mine(timestamp=posted + max_age + 1)
    with reverts(bme.StalePrice, updatedAt=posted, maxAge=max_age):
        bme.mintCredits(10 * UBT, 0, sender=holder)
    with reverts(bme.StalePrice, updatedAt=posted, maxAge=max_age):
        bme.redeem(10 * UBC, 0, sender=redeemer)
    with reverts(bme.StalePrice, updatedAt=posted, maxAge=max_age):
        bme.quoteMint(UBT)
    with reverts(bme.StalePrice, updatedAt=posted, maxAge=max_age):
        bme.quoteRedeem(UBC)

    credits, ubt_held = credit.balanceOf(holder), ubt.balanceOf(redeemer)
    oracle.setPrice(params.ubt_price, sender=deployer)
    bme.mintCredits(10 * UBT, 0, sender=holder)
    bme.redeem(10 * UBC, 0, sender=redeemer)
    assert credit.balanceOf(holder) == credits + quote_mint(10 * UBT, params.ubt_price)
    assert ubt.balanceOf(redeemer) == ubt_held + quote_redeem(10 * UBC, params.ubt_price)


def test_price_not_set_blocks_fresh_bme(project, deployer, buyers, params):
    ubt = project.UnderbidToken.deploy(deployer, 1_000 * UBT, sender=deployer)
    credit = project.UnderbidCredit.deploy(deployer, sender=deployer)
    oracle = project.PriceOracle.deploy(deployer, 3600, 3600, sender=deployer)
    bme = project.BurnMintEquilibrium.deploy(
        deployer, ubt, credit, oracle, 25, params.min_mint_credits, 10**6 * UBT, 86_400, sender=deployer
    )
    ubt.bindMinter(bme, sender=deployer)
    credit.bindProtocol(bme, sender=deployer)
    ubt.approve(bme, 100 * UBT, sender=deployer)
    with reverts(bme.PriceNotSet):
        bme.mintCredits(100 * UBT, 0, sender=deployer)
    with reverts(bme.PriceNotSet):
        bme.quoteMint(UBT)
    oracle.setPrice(10**8, sender=deployer)
    assert bme.mintCredits(100 * UBT, 0, sender=deployer).return_value == quote_mint(100 * UBT, 10**8)


def test_running_totals_move_exactly(chain, oracle, ubt, credit, bme, deployer, market, holder, buyers, params):
    other = buyers[2]
    market.give_ubt(other, 1_000 * UBT)
    ubt.approve(bme, 2**256 - 1, sender=other)
    totals = lambda: (bme.totalUbtBurned(), bme.totalUbtMinted(), bme.totalCreditsMinted(), bme.totalCreditsBurned())  # noqa: E731
    start = totals()
    ubt_supply, credit_supply = ubt.totalSupply(), credit.totalSupply()
    burned = minted = c_minted = c_burned = 0

    steps = [
        ("mint", holder, 1_234 * UBT + 567, params.ubt_price),
        ("mint", other, 17 * UBT, 123_456_789),
        ("redeem", holder, 500 * UBC + 123_456, 123_456_789),
        ("mint", holder, 9 * UBT + 1, 3_712_345_678),  # at the band's low, $1.23456789
        ("redeem", other, None, 3_712_345_678),  # everything it holds
        ("redeem", holder, 1, 99_999_999),  # one base unit
    ]
    # The band holds the seeded price and each price posted below: mints at its low, redemptions
    # at its high.
    band = Band(params.oracle_price_lag)
    seeded, seeded_at = oracle.lastPosted()
    band.post(seeded_at, seeded)
    t = chain.blocks.head.timestamp
    for kind, who, amount, price in steps:
        t += 1
        at(chain, t)
        oracle.setPrice(price, sender=deployer)
        band.post(t, price)
        low, high = band.ends(t)
        at(chain, t)  # the same timestamp, so the same band
        if kind == "mint":
            receipt = bme.mintCredits(amount, 0, sender=who)
            out = receipt.return_value
            assert out == quote_mint(amount, low)
            assert receipt.decode_logs(bme.CreditsMinted)[0].price == low
            burned, c_minted = burned + amount, c_minted + out
        else:
            amount = credit.balanceOf(who) if amount is None else amount
            receipt = bme.redeem(amount, 0, sender=who)
            out = receipt.return_value
            assert out == quote_redeem(amount, high)
            assert receipt.decode_logs(bme.CreditsRedeemed)[0].price == high
            c_burned, minted = c_burned + amount, minted + out
        assert totals() == (start[0] + burned, start[1] + minted, start[2] + c_minted, start[3] + c_burned)

    # Supplies move by exactly the BME's net: the health figure the CLI shows.
    assert ubt.totalSupply() == ubt_supply - burned + minted
    assert credit.totalSupply() == credit_supply + c_minted - c_burned
    assert credit.balanceOf(other) == 0


# --------------------------------------------------------------------------------------------
# Circuit breaker
# --------------------------------------------------------------------------------------------


def test_circuit_breaker_halts_redemption_and_drains(
    governed_by_deployer, chain, ubt, credit, bme, deployer, holder, redeemer, params
):
    cap, window = 100 * UBT, 997  # a prime window, so the drain rounds
    unit = quote_redeem(1, params.ubt_price)  # UBT for one credit base unit at $2: 5e11 wei
    t0 = chain.blocks.head.timestamp + 1
    at(chain, t0)
    bme.setParams(params.mint_spread_bps, params.min_mint_credits, cap, window, sender=deployer)
    bucket = Bucket(cap, window, 0, t0)
    assert_bucket(bme, bucket, t0)
    assert bme.redeemableUbt() == cap

    at(chain, t0)
    assert bme.redeem(60 * UBC, 0, sender=redeemer).return_value == 30 * UBT
    bucket.redeem(t0, 30 * UBT)
    assert_bucket(bme, bucket, t0)
    assert bme.netMintedInWindow() == 30 * UBT and bme.redeemableUbt() == 70 * UBT

    # Filling the bucket to exactly the cap is allowed.
    at(chain, t0)
    bme.redeem(140 * UBC, 0, sender=redeemer)
    bucket.redeem(t0, 70 * UBT)
    assert bme.netMintedInWindow() == cap and bme.redeemableUbt() == 0

    # One more base unit would pass it.
    at(chain, t0)
    with reverts(bme.RedemptionHalted, netMinted=cap, requested=unit, cap=cap):
        bme.redeem(1, 0, sender=redeemer)

    # Minting stays open while redemption is halted, and the UBT it burns lowers the net.
    credits = credit.balanceOf(holder)
    at(chain, t0)
    out = bme.mintCredits(6 * UBT, 0, sender=holder).return_value
    assert out == quote_mint(6 * UBT, params.ubt_price) and credit.balanceOf(holder) == credits + out
    bucket.mint(t0, 6 * UBT)
    assert_bucket(bme, bucket, t0)
    assert bme.redeemableUbt() == 6 * UBT

    at(chain, t0)
    with reverts(bme.RedemptionHalted, netMinted=cap - 6 * UBT, requested=6 * UBT + unit, cap=cap):
        bme.redeem(12 * UBC + 1, 0, sender=redeemer)
    at(chain, t0)
    bme.redeem(12 * UBC, 0, sender=redeemer)
    bucket.redeem(t0, 6 * UBT)
    assert bme.netMintedInWindow() == cap

    # The bucket drains at cap/window per second, rounded down.
    for elapsed in (1, 2, 250):
        chain.mine(timestamp=t0 + elapsed)
        assert_bucket(bme, bucket, t0 + elapsed)
        assert bme.redeemableUbt() == elapsed * cap // window
    t1 = t0 + 250
    room = bucket.redeemable(t1)
    fits = room // unit  # credits whose UBT fits the room exactly or just under
    at(chain, t1)
    with reverts(bme.RedemptionHalted, netMinted=bucket.level(t1), requested=(fits + 1) * unit, cap=cap):
        bme.redeem(fits + 1, 0, sender=redeemer)
    at(chain, t1)
    assert bme.redeem(fits, 0, sender=redeemer).return_value == fits * unit
    bucket.redeem(t1, fits * unit)
    assert_bucket(bme, bucket, t1)
    assert bme.redeemableUbt() < unit

    # A whole window after the last redemption the bucket is empty again.
    chain.mine(timestamp=t1 + window - 1)
    assert_bucket(bme, bucket, t1 + window - 1)
    assert 0 < bme.netMintedInWindow() <= cap // window + 1
    chain.mine(timestamp=t1 + window)
    assert bme.netMintedInWindow() == 0 and bme.redeemableUbt() == cap
    held = ubt.balanceOf(redeemer)
    at(chain, t1 + window)
    bme.redeem(200 * UBC, 0, sender=redeemer)
    assert ubt.balanceOf(redeemer) == held + cap


def test_minting_cannot_push_the_bucket_below_zero(
    governed_by_deployer, chain, bme, deployer, holder, redeemer, params
):
    cap, window = 100 * UBT, 1_000
    t0 = chain.blocks.head.timestamp + 1
    at(chain, t0)
    bme.setParams(params.mint_spread_bps, params.min_mint_credits, cap, window, sender=deployer)
    at(chain, t0)
    bme.redeem(20 * UBC, 0, sender=redeemer)  # 10 UBT
    at(chain, t0)
    bme.mintCredits(500 * UBT, 0, sender=holder)  # burns far more than the net
    assert bme.netMintedInWindow() == 0
    assert bme.redeemableUbt() == cap  # burns bank no extra room beyond the cap
    at(chain, t0)
    with reverts(bme.RedemptionHalted, netMinted=0, requested=cap + quote_redeem(2, params.ubt_price), cap=cap):
        bme.redeem(200 * UBC + 2, 0, sender=redeemer)


def test_set_params_settles_the_bucket_at_the_old_rate(governed_by_deployer, chain, bme, deployer, redeemer, params):
    t0 = chain.blocks.head.timestamp + 1
    at(chain, t0)
    bme.setParams(params.mint_spread_bps, params.min_mint_credits, 100 * UBT, 1_000, sender=deployer)
    at(chain, t0)
    bme.redeem(200 * UBC, 0, sender=redeemer)  # fills the bucket: 100 UBT
    bucket = Bucket(100 * UBT, 1_000, 100 * UBT, t0)

    # Half a window later, slow the drain tenfold: what already drained stays drained.
    t1 = t0 + 500
    at(chain, t1)
    bme.setParams(params.mint_spread_bps, params.min_mint_credits, 100 * UBT, 10_000, sender=deployer)
    bucket.set_params(t1, 100 * UBT, 10_000)
    assert bme.netMintedInWindow() == 50 * UBT

    t2 = t1 + 1_000
    chain.mine(timestamp=t2)
    assert_bucket(bme, bucket, t2)
    assert bme.netMintedInWindow() == 40 * UBT  # 50 - 1000 s x 100/10000 UBT per s

    # Lowering the cap below the level halts redemption at once.
    at(chain, t2)
    bme.setParams(params.mint_spread_bps, params.min_mint_credits, 30 * UBT, 10_000, sender=deployer)
    bucket.set_params(t2, 30 * UBT, 10_000)
    assert bme.netMintedInWindow() == 40 * UBT and bme.redeemableUbt() == 0
    at(chain, t2)
    with reverts(bme.RedemptionHalted, netMinted=40 * UBT, requested=quote_redeem(UBC, params.ubt_price), cap=30 * UBT):
        bme.redeem(UBC, 0, sender=redeemer)


def test_zero_cap_halts_all_redemption(governed_by_deployer, bme, deployer, redeemer, holder, params):
    bme.setParams(params.mint_spread_bps, params.min_mint_credits, 0, 1, sender=deployer)
    assert bme.redeemableUbt() == 0
    with reverts(bme.RedemptionHalted, netMinted=0, requested=quote_redeem(1, params.ubt_price), cap=0):
        bme.redeem(1, 0, sender=redeemer)
    bme.mintCredits(10 * UBT, 0, sender=holder)  # minting is unaffected


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def test_deployed_params(bme, ubt, credit, oracle, params):
    assert bme.mintSpreadBps() == params.mint_spread_bps
    assert bme.minMintCredits() == params.min_mint_credits
    assert bme.redeemCap() == params.redeem_cap
    assert bme.window() == params.redeem_window
    assert (bme.ubt(), bme.credit(), bme.oracle()) == (ubt.address, credit.address, oracle.address)
    assert bme.netMintedInWindow() == 0 and bme.redeemableUbt() == params.redeem_cap


def test_set_params_validation(governed_by_deployer, bme, deployer, params):
    with reverts(bme.InvalidParameter, name="mintSpreadBps"):
        bme.setParams(BPS, params.min_mint_credits, params.redeem_cap, params.redeem_window, sender=deployer)
    with reverts(bme.InvalidParameter, name="mintSpreadBps"):
        bme.setParams(2**16 - 1, params.min_mint_credits, params.redeem_cap, params.redeem_window, sender=deployer)
    with reverts(bme.InvalidParameter, name="window"):
        bme.setParams(params.mint_spread_bps, params.min_mint_credits, params.redeem_cap, 0, sender=deployer)
    assert bme.mintSpreadBps() == params.mint_spread_bps and bme.window() == params.redeem_window


def test_constructor_validates_params(project, ubt, credit, oracle, deployer, params):
    with reverts(project.BurnMintEquilibrium.InvalidParameter, name="mintSpreadBps"):
        project.BurnMintEquilibrium.deploy(deployer, ubt, credit, oracle, BPS, 0, 1, 1, sender=deployer)
    with reverts(project.BurnMintEquilibrium.InvalidParameter, name="window"):
        project.BurnMintEquilibrium.deploy(deployer, ubt, credit, oracle, 25, 0, 1, 0, sender=deployer)


def test_set_params_admin_only(governed_by_deployer, bme, deployer, outsider, params):
    with reverts(bme.AccessControlUnauthorizedAccount, account=outsider, neededRole=ADMIN_ROLE):
        bme.setParams(0, 0, 1, 1, sender=outsider)
    assert bme.hasRole(ADMIN_ROLE, deployer) and not bme.hasRole(ADMIN_ROLE, outsider)
    assert bme.redeemCap() == params.redeem_cap


def test_set_params_applies_new_values(governed_by_deployer, bme, credit, deployer, holder, params):
    receipt = bme.setParams(BPS - 1, 1, 5 * UBT, 60, sender=deployer)
    [event] = receipt.decode_logs(bme.BmeParamsUpdated)
    assert (event.mintSpreadBps, event.minMintCredits, event.redeemCap, event.window) == (BPS - 1, 1, 5 * UBT, 60)
    assert (bme.mintSpreadBps(), bme.minMintCredits(), bme.redeemCap(), bme.window()) == (BPS - 1, 1, 5 * UBT, 60)
    assert bme.quoteMint(UBT) == quote_mint(UBT, params.ubt_price, BPS - 1) == 200

    bme.setParams(100, 1, 5 * UBT, 60, sender=deployer)
    ubt_in = UBT // 1_000  # 0.001 UBT: below the default minimum, above the new one
    out = bme.mintCredits(ubt_in, 0, sender=holder).return_value
    assert out == quote_mint(ubt_in, params.ubt_price, 100) == 1_980
    assert credit.balanceOf(holder) == out
