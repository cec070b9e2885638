"""Sybil matchers (issue 9, finding 4): a second identity of the cheating matcher touches the
provider's bids or stake so that the receipt for the passed-over bid stops counting. Before, one
unit of another bid of the same provider, filled by the sybil, made every earlier receipt revert
`StakeLockedByOtherMatcher`. Now only the matcher an account is bound to can settle its messages,
so the sybil cannot fill, lock or consume anything of the provider's, and the challenge slashes.
Only the provider's own moves (leaving the matcher, unstaking) void its challenge.
"""

from __future__ import annotations

import pytest

from ..conftest import H100, UBC
from ..reverts import reverts
from .attack_kit import P_CHEAP, as_matcher, assert_slashed, at, bond_matcher, digest, head_time, passed_over


@pytest.fixture
def sybil(funded, accounts):
    """A second bonded matcher run by the cheater, with a buyer of its own bound to it."""
    m2, buyer = accounts[10], accounts[13]
    bond_matcher(funded, m2, m2.address)
    s = as_matcher(funded, m2)
    s.fund_buyer(buyer, 1_000 * UBC)
    return s, buyer


def test_sybil_cannot_fill_the_providers_bids(funded, sybil, chain, settlement, court, ubt, matcher, buyers, providers,
                                              params):
    """Attack: the sybil matcher fills one unit of the receipted bid B, or of another bid of the same
    provider, to lock its stake under another matcher. B names the honest matcher
    (`MessageForOtherMatcher`); a bid naming the sybil is refused because the provider is bound to
    the honest matcher (`AccountNotBound`). Nothing of the provider's changes; the challenge slashes."""
    m = funded
    s, s_buyer = sybil
    c, _ = passed_over(m, court, chain, providers[0], providers[1], buyers[0])
    stake0 = settlement.providers(providers[0])
    available0 = settlement.availableStake(providers[0])

    junk = s.order(s_buyer, units=1, duration=params.min_lease_duration)
    with reverts(settlement.MessageForOtherMatcher, digest=digest(c.bid[0], m), matcher=matcher.address):
        s.settle([junk], [c.bid], [(0, 0, 1)], {H100: P_CHEAP})

    other_bid = s.bid(providers[0], capacity=1, price=P_CHEAP)  # the provider did sign one for the sybil
    with reverts(settlement.AccountNotBound, account=providers[0], matcher=s.matcher):
        s.settle([junk], [other_bid], [(0, 0, 1)], {H100: P_CHEAP})

    # Nor can it spend the honest matcher's buyers' orders.
    their_order = s.order(buyers[1], units=1, duration=params.min_lease_duration)
    with reverts(settlement.AccountNotBound, account=buyers[1], matcher=s.matcher):
        s.settle([their_order], [other_bid], [(0, 0, 1)], {H100: P_CHEAP})

    assert settlement.providers(providers[0]) == stake0
    assert settlement.availableStake(providers[0]) == available0
    assert settlement.nonceState(providers[0], c.bid[0].nonce) == (False, False)
    assert settlement.nonceState(providers[0], other_bid[0].nonce) == (False, False)

    bond0, balance0 = settlement.matchers(matcher).bond, ubt.balanceOf(providers[0])
    assert_slashed(settlement, ubt, matcher, providers[0], c.send(), params, bond0, balance0)


def test_sybil_cannot_take_over_the_provider(funded, sybil, chain, settlement, court, matcher, buyers, providers):
    """Attack variant: the cheater binds the provider to the sybil. Only the account itself can
    change its binding; the sybil's own `bindMatcher` call binds only the sybil's address."""
    m = funded
    s, _ = sybil
    settlement.bindMatcher(s.matcher, sender=s.matcher)
    assert settlement.boundMatcherOf(providers[0]) == matcher.address
    c, _ = passed_over(m, court, chain, providers[0], providers[1], buyers[0])
    c.verify()


def test_provider_that_left_its_matcher_voids_its_own_challenge(funded, sybil, chain, settlement, court, matcher,
                                                                 buyers, providers, params):
    """The one way left to void a receipt is the provider's own: it asks to move to another matcher
    after the receipt. The honest matcher then drops its bids, so a challenge reverts
    `ProviderLeftMatcher`, both while the change is pending and after it took effect."""
    m = funded
    s, _ = sybil
    t0 = head_time(chain) + 2
    at(chain, t0)
    chain.mine()
    bid = {"deadline": t0 + 3600}
    issued = head_time(chain)
    at(chain, issued + 1)
    settlement.bindMatcher(s.matcher, sender=providers[0])
    binding = settlement.bindingOf(providers[0])
    assert binding.requestedAt == issued + 1 and binding.changeAt == issued + 1 + params.notice_period
    assert settlement.boundMatcherOf(providers[0]) == matcher.address  # still, during the notice

    c, _ = passed_over(m, court, chain, providers[0], providers[1], buyers[0], bid=bid, issued_at=issued)
    with reverts(court.ProviderLeftMatcher, provider=providers[0], matcher=matcher.address):
        c.verify()
    chain.mine(timestamp=binding.changeAt + 1)
    assert settlement.boundMatcherOf(providers[0]) == s.matcher.address
    with reverts(court.ProviderLeftMatcher, provider=providers[0], matcher=matcher.address):
        c.send()


def test_binding_before_the_receipt_does_not_void_it(funded, chain, settlement, court, matcher, buyers, providers):
    """The rule looks at changes requested after the receipt only: a provider that bound to the
    matcher (and never asked to leave) before the receipt keeps its challenge."""
    m = funded
    assert settlement.bindingOf(providers[0]).requestedAt == 0
    c, _ = passed_over(m, court, chain, providers[0], providers[1], buyers[0])
    who, _ = c.verify()
    assert who == matcher.address


def test_provider_that_unstaked_after_the_receipt_voids_its_own_challenge(funded, chain, settlement, court, buyers,
                                                                          providers):
    """The provider's own unstake announced after the receipt excuses the matcher
    (`StakeDecreasedAfterReceipt`): a matcher reading `availableStake` may have had to drop the bid."""
    m = funded
    issued = head_time(chain)
    at(chain, issued + 1)
    settlement.requestUnstake(m.params.stake_per_unit, sender=providers[0])
    c, _ = passed_over(m, court, chain, providers[0], providers[1], buyers[0], issued_at=issued)
    with reverts(court.StakeDecreasedAfterReceipt, decreasedAt=issued + 1, issuedAt=issued):
        c.verify()
