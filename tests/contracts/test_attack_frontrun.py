"""Front-running settlement (issue 9, finding 5): a buyer, provider or third party lands a
transaction just before the matcher's `settle` to make the whole batch revert. Before, a
`withdraw`, `requestUnstake` or `cancelNonces` did (`InsufficientEscrow`, `InsufficientFreeStake`,
`NonceUsed`) at ~40k gas a try, and after batch 0 of a split round it could even make an honest
matcher challengeable. Now all of them are announced and take effect only after `noticePeriod`,
while a batch's own deadline is less than the notice after the state it was simulated against:
the batch lands as simulated, or expires by its own deadline (`BatchExpired`).
"""

from __future__ import annotations

import pytest

from ..conftest import H100, HOUR, UBC
from ..reverts import reverts
from .attack_kit import (
    P_CHEAP,
    P_DEAR,
    Challenge,
    as_matcher,
    at,
    at_least,
    bond_matcher,
    digest,
    head_time,
    sign_receipt,
)

ACTIONS = ["withdrawal", "unstake", "cancel-order", "cancel-bid", "rebind", "all"]


@pytest.fixture
def m2(funded, accounts):
    bond_matcher(funded, accounts[10], accounts[10].address)
    return accounts[10]


def front_run(settlement, action, buyer, provider, order, bid, m2) -> None:
    """The attacker's move: the most damaging version of `action` by the batch's own buyer/provider."""
    if action in ("withdrawal", "all"):
        settlement.requestWithdrawal(settlement.escrowOf(buyer).free, sender=buyer)
    if action in ("unstake", "all"):
        settlement.requestUnstake(settlement.availableStake(provider), sender=provider)
    if action in ("cancel-order", "all"):
        settlement.requestCancel([order.nonce], sender=buyer)
    if action in ("cancel-bid", "all"):
        settlement.requestCancel([bid.nonce], sender=provider)
    if action in ("rebind", "all"):
        settlement.bindMatcher(m2, sender=buyer)
        settlement.bindMatcher(m2, sender=provider)


@pytest.mark.parametrize("action", ACTIONS)
def test_announcement_before_settle_does_not_revert_the_batch(funded, m2, chain, settlement, matcher, buyers,
                                                              providers, params, action):
    """Attack: the batch's buyer or provider withdraws all escrow, unstakes all stake, cancels its
    nonce or moves to another matcher right before `settle`. Each is only an announcement now: the
    batch settles as simulated, and the announced change takes effect after `noticePeriod`."""
    m = funded
    buyer, provider = buyers[0], providers[0]
    t = head_time(chain) + 2  # the chain state the matcher simulates against
    at(chain, t)
    chain.mine()
    o = m.order(buyer, units=2, duration=2 * HOUR, max_price=3 * UBC)
    b = m.bid(provider, capacity=4, price=P_DEAR)
    deadline = t + params.notice_period // 2
    free0 = settlement.escrowOf(buyer).free
    staked0 = settlement.providers(provider).staked

    at(chain, t + 1)
    front_run(settlement, action, buyer, provider, o[0], b[0], m2)
    assert at_least(chain, t + 3) <= deadline
    tx = m.settle([o], [b], [(0, 0, 2)], {H100: P_DEAR}, deadline=deadline)
    [lease_id] = m.lease_ids(tx)
    cost = 2 * P_DEAR * 2
    assert settlement.escrowOf(buyer).locked == cost
    assert settlement.providers(provider).locked == 2 * params.stake_per_unit
    assert settlement.getLease(lease_id).provider == provider.address

    # The announced changes wait for the notice period, and then apply to what is left.
    if action in ("cancel-order", "cancel-bid", "all"):
        signer, nonce = (buyer, o[0].nonce) if action == "cancel-order" else (provider, b[0].nonce)
        requested = settlement.cancelRequestedAt(signer, nonce)
        with reverts(settlement.NoticeNotOver, readyAt=requested + params.notice_period):
            settlement.cancelNonces([nonce], sender=signer)
    if action in ("rebind", "all"):
        assert settlement.boundMatcherOf(buyer) == matcher.address
        assert settlement.boundMatcherOf(provider) == matcher.address
    if action in ("withdrawal", "all"):
        ready = settlement.pendingWithdrawal(buyer).readyAt
        assert ready == t + 1 + params.notice_period
        with reverts(settlement.NoticeNotOver, readyAt=ready):
            settlement.withdraw(sender=buyer)
        at(chain, ready)
        assert settlement.withdraw(sender=buyer).return_value == free0 - cost
        assert settlement.escrowOf(buyer).free == 0 and settlement.escrowOf(buyer).locked == cost
    if action in ("rebind", "all"):
        change_at = settlement.bindingOf(buyer).changeAt
        if head_time(chain) < change_at:
            chain.mine(timestamp=change_at)
        assert settlement.boundMatcherOf(buyer) == m2.address
    if action in ("unstake", "all"):
        end = settlement.providers(provider).unbondingEnd
        with reverts(settlement.UnbondingNotFinished, unlocksAt=end):
            settlement.withdrawUnbonded(sender=provider)
        at(chain, end)
        settlement.withdrawUnbonded(sender=provider)
        assert settlement.providers(provider).staked == 2 * params.stake_per_unit  # the lease's collateral stays
        assert staked0 > 2 * params.stake_per_unit


@pytest.mark.parametrize("action", ["withdrawal", "unstake", "cancel-order", "cancel-bid", "rebind"])
def test_after_the_notice_a_stale_batch_has_expired(funded, m2, chain, settlement, buyers, providers, params, action):
    """Once the announced change can take effect, the batch simulated before the announcement is past
    its own deadline (less than the notice after the simulated state): it reverts `BatchExpired`,
    never `InsufficientEscrow`, `InsufficientFreeStake`, `NonceUsed` or `AccountNotBound`, so a
    matcher that keeps to the deadline rule is never surprised."""
    m = funded
    buyer, provider = buyers[0], providers[0]
    t = head_time(chain) + 2
    at(chain, t)
    chain.mine()
    o = m.order(buyer, units=2, duration=2 * HOUR, max_price=3 * UBC)
    b = m.bid(provider, capacity=4, price=P_DEAR)
    deadline = t + params.notice_period // 2
    at(chain, t + 1)
    front_run(settlement, action, buyer, provider, o[0], b[0], m2)

    effective = t + 1 + params.notice_period
    if action == "unstake":
        effective = settlement.providers(provider).unbondingEnd
    at(chain, effective)
    if action == "withdrawal":
        settlement.withdraw(sender=buyer)
    elif action == "unstake":
        settlement.withdrawUnbonded(sender=provider)
    elif action == "cancel-order":
        settlement.cancelNonces([o[0].nonce], sender=buyer)
    elif action == "cancel-bid":
        settlement.cancelNonces([b[0].nonce], sender=provider)
    else:
        chain.mine()
        assert settlement.boundMatcherOf(buyer) == m2.address
    assert head_time(chain) > deadline
    with reverts(settlement.BatchExpired, deadline=deadline):
        m.settle([o], [b], [(0, 0, 2)], {H100: P_DEAR}, deadline=deadline)


@pytest.mark.parametrize("second_batch_lands", [True, False], ids=["batch-1-lands", "batch-1-never-lands"])
def test_actions_between_batches_of_a_split_round(funded, m2, chain, settlement, court, matcher, buyers, providers,
                                                  params, second_batch_lands):
    """Attack: after batch 0 of an honest split round lands, batch 1's buyer and provider withdraw,
    unstake, cancel and rebind, so that batch 1 reverts and (before) the round looked like it passed
    over a bid, paying the attacker a share of the bond. Now batch 1 lands within the notice period
    and the round is not challengeable by any of its receipted bids; and since the honest matcher
    cuts batches by ascending bid price, even a batch 1 that never lands leaves only pricier bids out."""
    m = funded
    t = head_time(chain) + 2
    at(chain, t)
    chain.mine()
    r = m.next_round()
    b1 = m.bid(providers[0], capacity=2, price=P_CHEAP)
    b2 = m.bid(providers[1], capacity=2, price=P_DEAR)
    b3 = m.bid(providers[2], capacity=4, price=P_DEAR + UBC // 2)  # receipted, honestly left out
    receipts = {id(b): sign_receipt(m, b[0], r, t) for b in (b1, b2, b3)}
    o1 = m.order(buyers[0], units=2, duration=2 * HOUR, max_price=3 * UBC)
    o2 = m.order(buyers[1], units=2, duration=2 * HOUR, max_price=3 * UBC)
    deadline = t + params.notice_period // 2

    at(chain, t + 1)
    m.settle([o1], [b1], [(0, 0, 2)], {H100: P_DEAR}, round_id=r, batch=0, final=False, deadline=deadline)
    at(chain, t + 2)
    front_run(settlement, "all", buyers[1], providers[1], o2[0], b2[0], m2)
    if second_batch_lands:
        assert at_least(chain, t + 6) <= deadline
        tx = m.settle([o2], [b2], [(0, 0, 2)], {H100: P_DEAR}, round_id=r, batch=1, final=True, deadline=deadline)
        assert len(m.lease_ids(tx)) == 1
        assert settlement.rounds(matcher, r).finalizedAt == tx.timestamp
    else:
        chain.mine(timestamp=t + 1 + params.max_round_span + 1)
    assert settlement.isRoundFinal(matcher, r)

    witnesses = [(o1[0], b1[0])] + ([(o2[0], b2[0])] if second_batch_lands else [])
    for bid in (b1, b2, b3):
        for order, witness in witnesses:
            c = Challenge(m, court, bid[0].provider, receipts[id(bid)], bid, r, order, witness)
            if witness.price <= bid[0].price:
                with reverts(court.WitnessNotPricier, witnessPrice=witness.price, bidPrice=bid[0].price):
                    c.verify()
            else:  # b1 against b2's lease: b1 was used up, by a lease as long as the witness's
                with reverts(court.BidFullyFilled, bidDigest=digest(b1[0], m)):
                    c.replace(fill_lease=(r, o1[0])).verify()  # b1's own lease names the round
                with reverts(court.SwapNotShorter):
                    c.replace(own_order=o1[0]).verify()


def test_rebind_to_another_matcher_cannot_be_used_by_it_before_the_notice(funded, m2, chain, settlement, buyers,
                                                                          providers):
    """Attack variant: the provider moves to a sybil matcher that fills its stake first. During the
    notice the provider is still bound to the old matcher: the sybil's batch reverts `AccountNotBound`."""
    m = funded
    s = as_matcher(m, m2)
    settlement.bindMatcher(m2, sender=providers[0])
    settlement.bindMatcher(m2, sender=buyers[0])
    o = s.order(buyers[0], units=1, duration=HOUR)
    b = s.bid(providers[0], capacity=8, price=P_CHEAP)
    with reverts(settlement.AccountNotBound, account=buyers[0], matcher=m2):
        s.settle([o], [b], [(0, 0, 1)], {H100: P_CHEAP})
