"""PriceOracle: who posts, what is a valid price, and when a price is too old to use."""

import pytest
from eth_utils import keccak

from ..reverts import reverts


@pytest.fixture
def fresh_oracle(project, deployer):
    return project.PriceOracle.deploy(deployer, 60, sender=deployer)


def post(chain, oracle, price, sender, at=None):
    """Posts `price` in a block at timestamp `at` (default: one second after the head); returns `at`."""
    at = chain.blocks.head.timestamp + 1 if at is None else at
    chain.pending_timestamp = at
    oracle.setPrice(price, sender=sender)
    return at


def test_seeded_deployment(oracle, deployer, params):
    assert oracle.DECIMALS() == 8
    assert oracle.maxAge() == params.oracle_max_age
    assert oracle.hasRole(oracle.UPDATER_ROLE(), deployer)
    assert oracle.hasRole(oracle.DEFAULT_ADMIN_ROLE(), deployer)
    assert oracle.UPDATER_ROLE() == keccak(text="UPDATER_ROLE")
    price, updated_at = oracle.latestPrice()
    assert price == params.ubt_price and updated_at > 0
    assert tuple(oracle.lastPosted()) == (price, updated_at)


def test_updater_posts_price(chain, oracle, deployer):
    at = chain.blocks.head.timestamp + 5
    chain.pending_timestamp = at
    receipt = oracle.setPrice(123_456_789, sender=deployer)
    assert tuple(oracle.latestPrice()) == (123_456_789, at)
    assert tuple(oracle.lastPosted()) == (123_456_789, at)
    [event] = receipt.decode_logs(oracle.PricePosted)
    assert event.price == 123_456_789 and event.updatedAt == at


def test_only_updater_posts(chain, oracle, deployer, outsider, params):
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
    at = post(chain, fresh_oracle, 42 * 10**8, deployer)
    assert tuple(fresh_oracle.latestPrice()) == (42 * 10**8, at)


def test_constructor_rejects_zero_max_age(project, deployer):
    with reverts(project.PriceOracle.InvalidParameter, name="maxAge"):
        project.PriceOracle.deploy(deployer, 0, sender=deployer)


def test_price_goes_stale_after_max_age(chain, oracle, deployer, params):
    max_age = params.oracle_max_age
    at = post(chain, oracle, 3 * 10**8, deployer)

    chain.mine(timestamp=at + max_age)  # exactly max age: still usable
    assert tuple(oracle.latestPrice()) == (3 * 10**8, at)

    chain.mine(timestamp=at + max_age + 1)
    with reverts(oracle.StalePrice, updatedAt=at, maxAge=max_age):
        oracle.latestPrice()
    # lastPosted shows it anyway, for display.
    assert tuple(oracle.lastPosted()) == (3 * 10**8, at)

    # A new post makes the price usable again.
    again = post(chain, oracle, 4 * 10**8, deployer)
    assert tuple(oracle.latestPrice()) == (4 * 10**8, again)


def test_set_max_age(chain, oracle, deployer, outsider, params):
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
