"""PriceOracle: who posts, what is a valid price, when a price is too old to use, and the band."""

import pytest
from eth_utils import keccak
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ..band import Band, reference_band
from ..reverts import reverts


@pytest.fixture
def fresh_oracle(project, deployer):
    return project.PriceOracle.deploy(deployer, 60, 60, sender=deployer)


def post(chain, oracle, price, sender, at=None):
    """Posts `price` in a block at timestamp `at` (default: one second after the head); returns `at`."""
    at = chain.blocks.head.timestamp + 1 if at is None else at
    chain.pending_timestamp = at
    oracle.setPrice(price, sender=sender)
    return at


def test_seeded_deployment(oracle, bme, timelock, deployer, params):
    assert oracle.DECIMALS() == 8
    assert oracle.maxAge() == params.oracle_max_age
    assert oracle.priceLag() == params.oracle_price_lag
    assert oracle.hasRole(oracle.UPDATER_ROLE(), deployer)
    # Parameters change only through the timelock; prices post at once.
    for governed in (oracle, bme):
        assert governed.hasRole(governed.DEFAULT_ADMIN_ROLE(), timelock)
        assert not governed.hasRole(governed.DEFAULT_ADMIN_ROLE(), deployer)
    assert oracle.UPDATER_ROLE() == keccak(text="UPDATER_ROLE")
    price, updated_at = oracle.latestPrice()
    assert price == params.ubt_price and updated_at > 0
    assert tuple(oracle.lastPosted()) == (price, updated_at)
    assert tuple(oracle.priceBand()) == (price, price)  # one price ever posted


def test_updater_posts_price(chain, oracle, deployer):
    at = chain.blocks.head.timestamp + 5
    chain.pending_timestamp = at
    receipt = oracle.setPrice(123_456_789, sender=deployer)
    assert tuple(oracle.latestPrice()) == (123_456_789, at)
    assert tuple(oracle.lastPosted()) == (123_456_789, at)
    [event] = receipt.decode_logs(oracle.PricePosted)
    assert event.price == 123_456_789 and event.updatedAt == at


def test_only_updater_posts(chain, oracle, deployer, outsider, params, governed_by_deployer):
    role = oracle.UPDATER_ROLE()
    with reverts(oracle.AccessControlUnauthorizedAccount, account=outsider, neededRole=role):
        oracle.setPrice(5 * 10**8, sender=outsider)
    assert oracle.latestPrice().price == params.ubt_price

    # Only the admin grants the updater role.
    with reverts(oracle.AccessControlUnauthorizedAccount, account=outsider, neededRole=oracle.DEFAULT_ADMIN_ROLE()):
        oracle.grantRole(role, outsider, sender=outsider)
    oracle.grantRole(role, outsider, sender=deployer)
    oracle.setPrice(5 * 10**8, sender=outsider)
    assert oracle.latestPrice().price == 5 * 10**8

    # An updater is not an admin: it cannot change the max age.
    with reverts(oracle.AccessControlUnauthorizedAccount, account=outsider, neededRole=oracle.DEFAULT_ADMIN_ROLE()):
        oracle.setMaxAge(1, sender=outsider)

    oracle.revokeRole(role, outsider, sender=deployer)
    with reverts(oracle.AccessControlUnauthorizedAccount, account=outsider, neededRole=role):
        oracle.setPrice(6 * 10**8, sender=outsider)
    assert oracle.latestPrice().price == 5 * 10**8


def test_zero_and_oversized_price_are_invalid(oracle, deployer, params):
    with reverts(oracle.InvalidPrice):
        oracle.setPrice(0, sender=deployer)
    with reverts(oracle.InvalidPrice):
        oracle.setPrice(2**128, sender=deployer)
    assert oracle.latestPrice().price == params.ubt_price
    oracle.setPrice(2**128 - 1, sender=deployer)
    assert oracle.latestPrice().price == 2**128 - 1
    oracle.setPrice(1, sender=deployer)
    assert oracle.latestPrice().price == 1


def test_price_not_set_on_fresh_oracle(chain, fresh_oracle, deployer):
    assert fresh_oracle.maxAge() == 60
    assert tuple(fresh_oracle.lastPosted()) == (0, 0)
    with reverts(fresh_oracle.PriceNotSet):
        fresh_oracle.latestPrice()
    with reverts(fresh_oracle.PriceNotSet):
        fresh_oracle.priceBand()
    at = post(chain, fresh_oracle, 42 * 10**8, deployer)
    assert tuple(fresh_oracle.latestPrice()) == (42 * 10**8, at)
    assert tuple(fresh_oracle.priceBand()) == (42 * 10**8, 42 * 10**8)


def test_constructor_rejects_zero_max_age_and_lag(project, deployer):
    with reverts(project.PriceOracle.InvalidParameter, name="maxAge"):
        project.PriceOracle.deploy(deployer, 0, 60, sender=deployer)
    with reverts(project.PriceOracle.InvalidParameter, name="priceLag"):
        project.PriceOracle.deploy(deployer, 60, 0, sender=deployer)
    assert project.PriceOracle.deploy(deployer, 1, 2**32 - 1, sender=deployer).priceLag() == 2**32 - 1


def test_price_goes_stale_after_max_age(chain, oracle, deployer, params):
    max_age = params.oracle_max_age
    at = post(chain, oracle, 3 * 10**8, deployer)

    chain.mine(timestamp=at + max_age)  # exactly max age: still usable
    assert tuple(oracle.latestPrice()) == (3 * 10**8, at)

    chain.mine(timestamp=at + max_age + 1)
    with reverts(oracle.StalePrice, updatedAt=at, maxAge=max_age):
        oracle.latestPrice()
    with reverts(oracle.StalePrice, updatedAt=at, maxAge=max_age):
        oracle.priceBand()
    # lastPosted shows it anyway, for display.
    assert tuple(oracle.lastPosted()) == (3 * 10**8, at)

    # A new post makes the price usable again.
    again = post(chain, oracle, 4 * 10**8, deployer)
    assert tuple(oracle.latestPrice()) == (4 * 10**8, again)


def test_set_max_age(governed_by_deployer, chain, oracle, deployer, outsider, params):
    at = post(chain, oracle, 3 * 10**8, deployer)
    chain.mine(timestamp=at + params.oracle_max_age + 1)
    with reverts(oracle.StalePrice, updatedAt=at, maxAge=params.oracle_max_age):
        oracle.latestPrice()

    # Freshness is judged at read time, against the current max age.
    receipt = oracle.setMaxAge(2 * params.oracle_max_age, sender=deployer)
    [event] = receipt.decode_logs(oracle.MaxAgeUpdated)
    assert event.maxAge == 2 * params.oracle_max_age
    assert oracle.maxAge() == 2 * params.oracle_max_age
    assert tuple(oracle.latestPrice()) == (3 * 10**8, at)

    now = chain.blocks.head.timestamp
    oracle.setMaxAge(now - at - 1, sender=deployer)
    with reverts(oracle.StalePrice, updatedAt=at, maxAge=now - at - 1):
        oracle.latestPrice()

    with reverts(oracle.InvalidParameter, name="maxAge"):
        oracle.setMaxAge(0, sender=deployer)
    with reverts(oracle.AccessControlUnauthorizedAccount, account=outsider, neededRole=oracle.DEFAULT_ADMIN_ROLE()):
        oracle.setMaxAge(10**6, sender=outsider)
    assert oracle.maxAge() == now - at - 1


def test_last_posted_tracks_every_post(chain, fresh_oracle, deployer):
    first = post(chain, fresh_oracle, 10**8, deployer)
    assert tuple(fresh_oracle.lastPosted()) == (10**8, first)
    second = post(chain, fresh_oracle, 2 * 10**8, deployer, at=first + 30)
    assert tuple(fresh_oracle.lastPosted()) == (2 * 10**8, second)
    chain.mine(timestamp=second + 61)
    with reverts(fresh_oracle.StalePrice, updatedAt=second, maxAge=60):
        fresh_oracle.latestPrice()
    assert tuple(fresh_oracle.lastPosted()) == (2 * 10**8, second)


# --------------------------------------------------------------------------------------------
# The price band
# --------------------------------------------------------------------------------------------


def band_at(chain, oracle, t):
    """`priceBand()` read in a block mined at timestamp `t`."""
    chain.mine(timestamp=t)
    return tuple(oracle.priceBand())


def test_band_keeps_every_price_of_the_last_lag(chain, oracle, deployer, params):
    lag = params.oracle_price_lag
    p0, p1, p2 = params.ubt_price, params.ubt_price * 95 // 100, params.ubt_price * 103 // 100
    # Start at the beginning of a period, after the seeded price has been alone for two periods.
    start = (chain.blocks.head.timestamp // lag + 3) * lag
    post(chain, oracle, p0, deployer, at=start)
    assert tuple(oracle.priceBand()) == (p0, p0)

    # Two updates within the period: the band holds all three prices.
    post(chain, oracle, p1, deployer, at=start + 10)
    assert tuple(oracle.priceBand()) == (p1, p0)
    assert tuple(oracle.latestPrice()) == (p1, start + 10)
    post(chain, oracle, p2, deployer, at=start + 20)
    assert tuple(oracle.priceBand()) == (p1, p2)
    assert band_at(chain, oracle, start + lag - 1) == (p1, p2)

    # The next period still holds the previous one, even with a new post in it...
    assert band_at(chain, oracle, start + lag) == (p1, p2)
    post(chain, oracle, p0, deployer, at=start + lag + 5)
    assert tuple(oracle.priceBand()) == (p1, p2)
    # ... until it is two periods old: then the previous period's p2 (in effect when it began) and p0 are left.
    post(chain, oracle, p0, deployer, at=start + 2 * lag)
    assert tuple(oracle.priceBand()) == (p0, p2)
    assert band_at(chain, oracle, start + 3 * lag - 1) == (p0, p2)
    # A whole period with only p0 in effect: the band is p0 alone, with or without a new post.
    assert band_at(chain, oracle, start + 3 * lag) == (p0, p0)
    post(chain, oracle, p0, deployer, at=start + 3 * lag + 1)
    assert tuple(oracle.priceBand()) == (p0, p0)


def test_band_after_a_gap_in_posts(chain, deployer, project):
    """A post after whole periods without one: the price it replaces is in the band for two periods."""
    lag = 100
    oracle = project.PriceOracle.deploy(deployer, 10_000, lag, sender=deployer)
    start = (chain.blocks.head.timestamp // lag + 2) * lag
    post(chain, oracle, 10**8, deployer, at=start + 50)
    post(chain, oracle, 2 * 10**8, deployer, at=start + 60)
    post(chain, oracle, 3 * 10**8, deployer, at=start + 5 * lag + 7)  # periods +1..+4 had 2e8 alone
    assert tuple(oracle.priceBand()) == (2 * 10**8, 3 * 10**8)
    assert band_at(chain, oracle, start + 6 * lag) == (2 * 10**8, 3 * 10**8)
    assert band_at(chain, oracle, start + 7 * lag) == (3 * 10**8, 3 * 10**8)
    # The band reads StalePrice like latestPrice.
    chain.mine(timestamp=start + 5 * lag + 7 + 10_001)
    with reverts(oracle.StalePrice, updatedAt=start + 5 * lag + 7, maxAge=10_000):
        oracle.priceBand()


# Steps of (seconds before the post, price, seconds after the post to read again). Gaps reach past
# two periods of the 100-second lag below, so every case of the band occurs.
steps = st.lists(
    st.tuples(st.integers(0, 250), st.integers(1, 10**9), st.integers(0, 250)), min_size=1, max_size=10
)


@settings(
    max_examples=10,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate),  # each step is anvil transactions
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=steps)
def test_band_is_the_prices_in_effect_since_the_previous_period(chain, deployer, project, steps):
    """The contract's band equals the model's, and the definition: low and high of every price in
    effect at some moment since the previous period began (so of every price of the last `lag` s)."""
    lag = 100
    oracle = project.PriceOracle.deploy(deployer, 10**6, lag, sender=deployer)
    model = Band(lag)
    t = chain.blocks.head.timestamp + 1
    for before, price, after in steps:
        t += before
        post(chain, oracle, price, deployer, at=t)
        model.post(t, price)
        assert tuple(oracle.priceBand()) == model.ends(t) == reference_band(model.posts, lag, t)
        if after:
            t += after
            assert band_at(chain, oracle, t) == model.ends(t) == reference_band(model.posts, lag, t)
