"""Attacks on rounds (issue 9, findings 1 and 3): a cheating matcher tries to make the round that
passed over a receipted cheaper bid unchallengeable through how it opens, closes, numbers or signs
its rounds. Each test plays the attack and asserts the challenge still slashes, or that the
attacker's move reverts with a named error.
"""

from __future__ import annotations

import pytest

from ..conftest import UBC
from ..reverts import reverts
from .attack_kit import (
    P_DEAR,
    as_matcher,
    assert_slashed,
    at,
    bond_matcher,
    head_time,
    passed_over,
    sign_receipt,
)


@pytest.fixture
def m2(accounts):
    """A second matcher identity (the attacker's, or just another operator)."""
    return accounts[10]


# ----------------------------------------------------------------------------------------------
# finding 1: a round that is never finalized, or finalized late
# ----------------------------------------------------------------------------------------------


def test_round_left_open_is_final_after_max_round_span(funded, chain, settlement, court, ubt, matcher, buyers,
                                                        providers, params):
    """Attack: settle batch 0 with finalBatch=false and never finalize, so (before) every challenge
    reverted `RoundNotSettled` while the matcher exited with its whole bond. Now the round is final
    `maxRoundSpan` after its first batch: it takes no more batches and the challenge slashes."""
    m = funded
    c, tx = passed_over(m, court, chain, providers[0], providers[1], buyers[0], final=False)
    opened = settlement.rounds(matcher, c.witness_round).openedAt
    assert opened == tx.timestamp and settlement.rounds(matcher, c.witness_round).finalizedAt == 0
    assert not settlement.isRoundFinal(matcher, c.witness_round)
    with reverts(court.RoundNotFinal, round=c.witness_round):
        c.verify()

    # The matcher asks to leave right away: its bond stays until the lease's challenge window ends.
    settlement.requestMatcherExit(sender=matcher)
    chain.mine(timestamp=opened + params.max_round_span + 1)
    assert settlement.isRoundFinal(matcher, c.witness_round)
    with reverts(settlement.ExitDelayNotOver):
        settlement.withdrawMatcherBond(sender=matcher)

    bond0, balance0 = settlement.matchers(matcher).bond, ubt.balanceOf(providers[0])
    challenge_tx = c.send()
    assert_slashed(settlement, ubt, matcher, providers[0], challenge_tx, params, bond0, balance0)
    [event] = challenge_tx.decode_logs(court.MatcherSlashed)
    assert event.matcher == matcher.address and event.round == c.witness_round


def test_open_round_takes_no_batch_after_max_round_span(funded, chain, settlement, court, matcher, buyers, providers,
                                                        params):
    """Attack variant: keep the round open and add a late batch (say, one that fills the passed-over
    bid afterwards). A later batch after `maxRoundSpan` reverts `RoundClosed`."""
    m = funded
    c, tx = passed_over(m, court, chain, providers[0], providers[1], buyers[0], final=False)
    at(chain, tx.timestamp + params.max_round_span + 1)
    late = m.order(buyers[1], units=3)
    with reverts(settlement.RoundClosed, round=c.witness_round):
        m.settle([late], [c.bid], [(0, 0, 3)], {late[0].market: P_DEAR}, round_id=c.witness_round, batch=1)


def test_opening_the_next_round_finalizes_the_open_one(funded, chain, settlement, court, ubt, matcher, buyers,
                                                       providers, params):
    """Attack variant: leave round R open and carry on with round R+1. Opening R+1 makes R final at
    once (challengeable before its span is over), and R takes no more batches (`RoundClosed`)."""
    m = funded
    c, _ = passed_over(m, court, chain, providers[0], providers[1], buyers[0], final=False)
    m.settle([], [], [], {}, final=False)  # round R+1, empty
    assert settlement.lastRound(matcher) == c.witness_round + 1
    assert settlement.isRoundFinal(matcher, c.witness_round)
    with reverts(settlement.RoundClosed, round=c.witness_round):
        m.settle([], [], [], {}, round_id=c.witness_round, batch=1)

    bond0, balance0 = settlement.matchers(matcher).bond, ubt.balanceOf(providers[0])
    tx = c.send()
    assert_slashed(settlement, ubt, matcher, providers[0], tx, params, bond0, balance0)


def test_late_empty_final_batch_does_not_expire_the_bid(funded, chain, settlement, court, ubt, matcher, buyers,
                                                        providers, params):
    """Attack: land the witness lease while B is valid, then send an empty final batch as late as
    the round allows and wait for B to expire; before, the bid's deadline was checked against the
    round's settlement time and the challenge reverted `BidExpiredBeforeRound`. Now it is checked
    against the witness lease's start (a bid counts if it lives `noticePeriod` past it), and a
    round takes no batch after `maxRoundSpan`, which is shorter than the notice."""
    m = funded
    t0 = head_time(chain) + 5
    # The shortest-lived bid a challenge counts: valid for the notice period after the witness.
    deadline = t0 + settlement.noticePeriod()
    c, tx = passed_over(m, court, chain, providers[0], providers[1], buyers[0], final=False, settle_at=t0,
                        bid={"deadline": deadline})
    assert tx.timestamp == t0
    at(chain, t0 + settlement.maxRoundSpan())  # the last second of the round's span
    final_tx = m.settle([], [], [], {}, round_id=c.witness_round, batch=1, final=True)
    assert settlement.rounds(matcher, c.witness_round).finalizedAt == final_tx.timestamp
    at(chain, deadline + 1)  # B has expired by the time the provider challenges

    bond0, balance0 = settlement.matchers(matcher).bond, ubt.balanceOf(providers[0])
    challenge_tx = c.send()
    assert_slashed(settlement, ubt, matcher, providers[0], challenge_tx, params, bond0, balance0)


def test_bid_expired_before_the_witness_lease_cannot_challenge(funded, chain, settlement, court, matcher, buyers,
                                                               providers):
    """The check is not simply dropped: a bid that had expired when the witness lease opened proves
    nothing (`BidExpiredBeforeWitness`)."""
    m = funded
    t0 = head_time(chain) + 5
    c, tx = passed_over(m, court, chain, providers[0], providers[1], buyers[0], settle_at=t0,
                        bid={"deadline": t0 - 1})
    with reverts(court.BidExpiredBeforeWitness, deadline=t0 - 1, witnessStart=tx.timestamp):
        c.send()


# ----------------------------------------------------------------------------------------------
# finding 3: round ids, other matchers, receipt keys
# ----------------------------------------------------------------------------------------------


def test_other_matcher_cannot_squat_round_ids(funded, chain, settlement, court, ubt, matcher, m2, buyers, providers,
                                              params):
    """Attack: a second bonded matcher settles empty final batches under the honest matcher's next
    round ids first; before, the honest settle then reverted `RoundAlreadySettled` and its receipts
    for that round were worthless. Rounds are per matcher now: the honest round lands and is challengeable."""
    m = funded
    bond_matcher(m, m2, m2.address)
    r = m.next_round()
    squatter = as_matcher(m, m2)
    for round_id in (r, r + 1, 2**63):
        squatter.settle([], [], [], {}, round_id=round_id, final=True)
    assert settlement.lastRound(m2) == 2**63
    assert settlement.lastRound(matcher) == r - 1
    assert settlement.rounds(m2, r).finalizedAt > 0
    assert settlement.rounds(matcher, r).openedAt == 0

    c, tx = passed_over(m, court, chain, providers[0], providers[1], buyers[0], round_id=r)
    assert settlement.rounds(matcher, r).finalizedAt == tx.timestamp
    bond0, balance0 = settlement.matchers(matcher).bond, ubt.balanceOf(providers[0])
    assert_slashed(settlement, ubt, matcher, providers[0], c.send(), params, bond0, balance0)
    assert settlement.matchers(m2).bond == params.min_matcher_bond  # the squatter is untouched


def test_matcher_cannot_reuse_a_round_id(funded, chain, settlement, court, matcher, buyers, providers):
    """Attack variant: settle the receipted round id again (or lower) after it is final, so that a
    receipt points at a round that may be replaced. Batch 0 must be above `lastRound`."""
    m = funded
    c, _ = passed_over(m, court, chain, providers[0], providers[1], buyers[0])
    r = c.witness_round
    with reverts(settlement.RoundIdNotIncreasing, round=r, lastRound=r):
        m.settle([], [], [], {}, round_id=r)
    with reverts(settlement.RoundIdNotIncreasing, round=r - 1, lastRound=r):
        m.settle([], [], [], {}, round_id=r - 1)
    with reverts(settlement.RoundAlreadySettled, round=r):
        m.settle([], [], [], {}, round_id=r, batch=1)


def test_witness_in_a_later_round_than_the_receipt(funded, chain, settlement, court, ubt, matcher, buyers, providers,
                                                   params):
    """Attack: receipt B for round R, then skip id R and pass B over in round R+5. A receipt covers
    every later round of its matcher, so the challenge names the witness round and slashes; a
    witness from before the receipt's round does not count (`WitnessBeforeReceipt`)."""
    m = funded
    r = m.next_round()
    c, _ = passed_over(m, court, chain, providers[0], providers[1], buyers[0], round_id=r + 5, receipt_round=r)
    assert settlement.rounds(matcher, r).openedAt == 0
    bond0, balance0 = settlement.matchers(matcher).bond, ubt.balanceOf(providers[0])
    assert_slashed(settlement, ubt, matcher, providers[0], c.send(), params, bond0, balance0)

    # A receipt for a round after the witness's proves nothing about the witness round.
    late = c.replace(receipt=sign_receipt(m, c.bid[0], r + 6, c.receipt[0].issued_at))
    with reverts(court.WitnessBeforeReceipt, receiptRound=r + 6, round=r + 5):
        late.verify()


def test_receipts_are_checked_against_the_registered_signer(market, chain, accounts, settlement, court, ubt, m2,
                                                            buyers, providers, params):
    """Attack: a matcher that settles from an address without a usable key (a contract) or signs its
    receipts with some other key, so no receipt ever verified against `msg.sender`. Now each
    matcher registers a `receiptSigner` when it bonds: receipts by that key are challengeable
    whatever address settles, and receipts by any other key are refused (`SignerMismatch`), so a
    provider can check a receipt before relying on it."""
    signer, stranger = accounts[11], accounts[12]
    bond_matcher(market, m2, signer.address)
    assert settlement.matchers(m2).receiptSigner == signer.address
    m = as_matcher(market, m2)
    m.fund_buyer(buyers[0], 1_000 * UBC)  # bound to m2
    m.stake_provider(providers[0], 8)
    m.stake_provider(providers[1], 8)
    c, _ = passed_over(m, court, chain, providers[0], providers[1], buyers[0], receipt_key=signer.private_key)

    for key, who in ((m2.private_key, m2), (stranger.private_key, stranger)):
        forged = c.replace(receipt=sign_receipt(m, c.bid[0], c.witness_round, c.receipt[0].issued_at, key=key))
        with reverts(court.SignerMismatch, expected=signer.address, recovered=who.address):
            forged.verify()

    bond0, balance0 = settlement.matchers(m2).bond, ubt.balanceOf(providers[0])
    assert_slashed(settlement, ubt, m2, providers[0], c.send(), params, bond0, balance0)


def test_receipt_signer_is_fixed_while_bonded(funded, accounts, settlement, m2, params):
    """Attack: after issuing receipts, re-bond naming a new receipt signer so the old receipts stop
    verifying. The signer is fixed by the first bond (`ReceiptSignerFixed`)."""
    signer, other = accounts[11], accounts[12]
    bond_matcher(funded, m2, signer.address)
    funded.give_ubt(m2, params.min_matcher_bond)
    funded.ubt.approve(settlement, params.min_matcher_bond, sender=m2)
    with reverts(settlement.ReceiptSignerFixed, signer=signer.address):
        settlement.bondMatcher(params.min_matcher_bond, other.address, sender=m2)
    settlement.bondMatcher(params.min_matcher_bond, signer.address, sender=m2)  # topping up is fine
    assert settlement.matchers(m2).receiptSigner == signer.address
    assert settlement.matchers(m2).bond == 2 * params.min_matcher_bond


def test_receipt_naming_another_matcher_does_not_move_the_slash(funded, chain, settlement, court, matcher, m2,
                                                                buyers, providers):
    """Sanity of the receipt's `matcher` field: a receipt that names another matcher than the bid
    does cannot be used against either (`ReceiptMatcherMismatch`)."""
    m = funded
    bond_matcher(m, m2, m2.address)
    c, _ = passed_over(m, court, chain, providers[0], providers[1], buyers[0])
    other = c.replace(receipt=sign_receipt(m, c.bid[0], c.witness_round, c.receipt[0].issued_at, matcher=m2))
    with reverts(court.ReceiptMatcherMismatch, named=matcher.address, matcher=m2.address):
        other.verify()

