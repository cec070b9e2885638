"""Junk fills (issue 9, finding 2): the matcher fills the cheap receipted bid with worthless leases
(0-second orders, zero-cost leases, short orders from a buyer it controls) so that the bid looks
used up and the challenge reverts `BidFullyFilled`. Each test plays the attack and asserts that the
junk lease cannot be opened, or that a challenge still proves the round wrong.
"""

from __future__ import annotations

import pytest

from ..conftest import H100, HOUR, UBC
from ..reverts import reverts
from .attack_kit import P_CHEAP, P_DEAR, Challenge, assert_slashed, digest, head_time, passed_over, sign_receipt


@pytest.mark.parametrize("duration", [0, 1, 59], ids=["zero", "one-second", "just-below"])
def test_orders_below_the_minimum_duration_are_refused(funded, settlement, buyers, providers, params, duration):
    """Attack: exhaust the cheap bid with an order of (nearly) no duration, which costs the matcher's
    buyer nothing. Before, `duration = 0` was accepted; now `settle` reverts `DurationTooShort`."""
    m = funded
    assert params.min_lease_duration == 60 > duration
    b = m.bid(providers[0], capacity=3, price=P_CHEAP)
    junk = m.order(buyers[2], units=3, duration=duration)
    with reverts(settlement.DurationTooShort, orderIndex=0, minimum=params.min_lease_duration):
        m.settle([junk], [b], [(0, 0, 3)], {H100: P_CHEAP})
    assert settlement.fills(digest(b[0], m)).filled == 0

    # The shortest allowed lease opens (and costs something).
    ok = m.order(buyers[2], units=3, duration=params.min_lease_duration)
    tx = m.settle([ok], [b], [(0, 0, 3)], {H100: P_CHEAP})
    [lease] = m.lease_ids(tx)
    assert settlement.getLease(lease).end - settlement.getLease(lease).start == params.min_lease_duration


def test_zero_cost_leases_are_refused(funded, settlement, buyers, providers, params):
    """Attack: fill the bid with a lease whose cost rounds down to zero (price 1 base unit per
    unit-hour for the minimum duration). `settle` reverts `ZeroCostLease`."""
    m = funded
    b = m.bid(providers[0], capacity=3, price=1)
    junk = m.order(buyers[2], units=3, duration=params.min_lease_duration, max_price=1)
    assert 3 * 1 * params.min_lease_duration // 3600 == 0
    with reverts(settlement.ZeroCostLease, matchIndex=0):
        m.settle([junk], [b], [(0, 0, 3)], {H100: 1})
    assert settlement.fills(digest(b[0], m)).filled == 0


def test_cheap_bid_used_for_a_short_order_while_a_dear_bid_serves_a_long_one(funded, chain, settlement, court, ubt,
                                                                              matcher, buyers, providers, params):
    """Attack: in one round the matcher's own buyer takes the cheap receipted B completely with a
    minimum-length order, while the dearer W serves the real 2-hour order that B also accepts.
    B is fully filled, so the spare-unit proof reverts `BidFullyFilled` (as every challenge did
    before); the swap proof (B's own shorter lease named by `ownOrderDigest`) slashes."""
    m = funded
    b = m.bid(providers[0], capacity=2, price=P_CHEAP)
    receipt = sign_receipt(m, b[0], m.next_round(), head_time(chain))
    w = m.bid(providers[1], capacity=4, price=P_DEAR)
    real = m.order(buyers[0], units=2, duration=2 * HOUR, max_price=3 * UBC)
    junk = m.order(buyers[2], units=2, duration=params.min_lease_duration, max_price=3 * UBC)
    m.settle([real, junk], [w, b], [(0, 0, 2), (1, 1, 2)], {H100: P_DEAR})
    round_id = settlement.lastRound(matcher)
    assert settlement.remainingOf(digest(b[0], m), providers[0], b[0].nonce, 2) == 0

    c = Challenge(m, court, providers[0], receipt, b, round_id, real[0], w[0])
    # B's first fill used it up (no fill record); its junk lease names the round that did.
    with reverts(court.BidFullyFilled, bidDigest=digest(b[0], m)):
        c.replace(fill_lease=(round_id, junk[0])).verify()

    swap = c.replace(own_order=junk[0])
    bond0, balance0 = settlement.matchers(matcher).bond, ubt.balanceOf(providers[0])
    tx = swap.send()
    assert_slashed(settlement, ubt, matcher, providers[0], tx, params, bond0, balance0)
    with reverts(court.AlreadyChallenged, round=round_id, bidDigest=digest(b[0], m)):
        swap.verify()


def test_swap_proof_needs_a_lease_of_the_bid_in_the_witness_round(funded, chain, settlement, court, buyers,
                                                                  providers):
    """The swap proof cannot be faked: the named own order must be a lease of B in the witness round
    (`WitnessNotInRound`)."""
    m = funded
    c, _ = passed_over(m, court, chain, providers[0], providers[1], buyers[0])
    stranger = m.order(buyers[2], duration=60)
    with reverts(court.WitnessNotInRound):
        c.replace(own_order=stranger[0]).verify()


def test_junk_fill_in_a_later_round_does_not_excuse_the_earlier_one(funded, chain, settlement, court, ubt, matcher,
                                                                    buyers, providers, params):
    """Attack: pass B over in round R, then fill B completely with a junk (minimum-length) order in
    round R+1, so that B looks used up; before, the challenge for R reverted `BidFullyFilled`.
    B's fill record keeps the last round that filled it (R+1 > R): B had units to spare when R
    ended, so the spare-unit challenge for R slashes."""
    m = funded
    c, _ = passed_over(m, court, chain, providers[0], providers[1], buyers[0])
    junk = m.order(buyers[2], units=3, duration=params.min_lease_duration, max_price=3 * UBC)
    m.settle([junk], [c.bid], [(0, 0, 3)], {H100: P_CHEAP})
    bid_digest = digest(c.bid[0], m)
    # B was used up by its first fill: no fill record, its nonce claimed and void; the round that
    # used it up is proven by naming one of its leases (the court checks the lease exists).
    assert tuple(settlement.fills(bid_digest)) == (0, 0)
    assert tuple(settlement.nonceState(providers[0], c.bid[0].nonce)) == (True, True)
    with reverts(court.BidNonceTaken, provider=providers[0].address, nonce=c.bid[0].nonce):
        c.verify()  # without the proof the court cannot tell B from another message with its nonce
    fake = c.replace(fill_lease=(c.witness_round + 1, c.order))  # B never had a lease with that order
    fake_id = settlement.leaseIdOf(matcher, c.witness_round + 1, digest(c.order, m), bid_digest)
    with reverts(court.FillLeaseNotFound, leaseId=fake_id):
        fake.verify()

    bond0, balance0 = settlement.matchers(matcher).bond, ubt.balanceOf(providers[0])
    tx = c.replace(fill_lease=(c.witness_round + 1, junk[0])).send()
    assert_slashed(settlement, ubt, matcher, providers[0], tx, params, bond0, balance0)


def test_bid_fully_filled_in_the_witness_round_is_honest(funded, chain, settlement, court, matcher, buyers,
                                                         providers):
    """The fill-record rule does not make an honest round challengeable: B filled completely, by a
    lease as long as the witness's, in the witness round itself, proves nothing (`BidFullyFilled`)."""
    m = funded
    b = m.bid(providers[0], capacity=3, price=P_CHEAP)
    receipt = sign_receipt(m, b[0], m.next_round(), head_time(chain))
    w = m.bid(providers[1], capacity=4, price=P_DEAR)
    # NOTE: 7201 s, not 7200: 7200 ends in byte 0x20, which anvil's text form of the revert data
    # loses as trailing whitespace, so the strict helper would decode the wrong number.
    o = m.order(buyers[0], units=5, duration=2 * HOUR + 1, max_price=3 * UBC)
    m.settle([o], [b, w], [(0, 0, 3), (0, 1, 2)], {H100: P_DEAR})
    c = Challenge(m, court, providers[0], receipt, b, settlement.lastRound(matcher), o[0], w[0])
    # B was used up by its first fill, so it has no fill record: named by a lease of its own, the
    # round that used it up is the witness round itself.
    with reverts(court.BidFullyFilled, bidDigest=digest(b[0], m)):
        c.replace(fill_lease=(settlement.lastRound(matcher), o[0])).verify()
    with reverts(court.BidNonceTaken, provider=providers[0].address, nonce=b[0].nonce):
        c.verify()  # and without that proof the court refuses it as a taken nonce
    with reverts(court.SwapNotShorter, ownDuration=2 * HOUR + 1, witnessDuration=2 * HOUR + 1):
        c.replace(own_order=o[0]).verify()
