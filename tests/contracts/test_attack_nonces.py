"""Two messages sharing one nonce (issue 9, finding 8): a buyer (or provider) signs a
"replacement" with the same nonce, and both fill. Before, partial fills never consumed the nonce,
so the original and the replacement together filled twice the units. Now the first message to
fill claims the nonce: any other message with it reverts `NonceUsed`, two of them in one batch
revert `DuplicateNonce`, and no combination fills more than one message's units.
"""

from __future__ import annotations

import pytest

from ..conftest import H100, HOUR, UBC
from ..reverts import reverts
from .attack_kit import P_DEAR, at, at_least, digest, head_time


def test_replacement_order_cannot_fill_after_a_partial_fill(funded, settlement, buyers, providers):
    """Attack: order A (4 units) fills 2; the buyer's replacement A' (same nonce, 4 units) is then
    filled too, for 6 units in all. Now A' reverts `NonceUsed`; only A's remaining 2 units fill."""
    m = funded
    buyer = buyers[0]
    a = m.order(buyer, units=4)
    a2 = m.order(buyer, units=4, nonce=a[0].nonce, max_price=3 * UBC + 1)  # a different digest
    assert digest(a[0], m) != digest(a2[0], m)
    bid = m.bid(providers[0], capacity=8, price=P_DEAR)

    m.settle([a], [bid], [(0, 0, 2)], {H100: P_DEAR})
    assert settlement.nonceState(buyer, a[0].nonce) == (True, False)
    assert settlement.remainingOf(digest(a2[0], m), buyer, a[0].nonce, 4) == 0
    with reverts(settlement.NonceUsed, signer=buyer, nonce=a[0].nonce):
        m.settle([a2], [bid], [(0, 0, 1)], {H100: P_DEAR})

    m.settle([a], [bid], [(0, 0, 2)], {H100: P_DEAR})  # the rest of A
    assert settlement.nonceState(buyer, a[0].nonce) == (True, True)
    for message in (a, a2):
        with reverts(settlement.NonceUsed, signer=buyer, nonce=a[0].nonce):
            m.settle([message], [bid], [(0, 0, 1)], {H100: P_DEAR})
    assert settlement.escrowOf(buyer).locked == 4 * P_DEAR * 2  # 4 units x 2 h, never more


def test_replacement_bid_cannot_fill_after_a_partial_fill(funded, settlement, buyers, providers):
    """The same attack with a provider's bids: B (capacity 3) fills 1; B' (same nonce) reverts
    `NonceUsed`; the provider never serves more than 3 units under that nonce."""
    m = funded
    provider = providers[0]
    b = m.bid(provider, capacity=3, price=P_DEAR)
    b2 = m.bid(provider, capacity=3, nonce=b[0].nonce, price=P_DEAR - 1)
    m.settle([m.order(buyers[0], units=1)], [b], [(0, 0, 1)], {H100: P_DEAR})
    with reverts(settlement.NonceUsed, signer=provider, nonce=b[0].nonce):
        m.settle([m.order(buyers[1], units=3)], [b2], [(0, 0, 3)], {H100: P_DEAR})
    m.settle([m.order(buyers[1], units=2)], [b], [(0, 0, 2)], {H100: P_DEAR})
    with reverts(settlement.NonceUsed, signer=provider, nonce=b[0].nonce):
        m.settle([m.order(buyers[2], units=1)], [b2], [(0, 0, 1)], {H100: P_DEAR})
    assert settlement.providers(provider).locked == 3 * m.params.stake_per_unit


@pytest.mark.parametrize("kind", ["orders", "bids"])
def test_two_messages_with_one_nonce_in_one_batch(funded, settlement, buyers, providers, kind):
    """Attack: both messages in the same batch, where fills are tracked per array entry. The batch
    reverts `DuplicateNonce`."""
    m = funded
    if kind == "orders":
        a = m.order(buyers[0], units=2)
        a2 = m.order(buyers[0], units=2, nonce=a[0].nonce, duration=2 * HOUR + 60)
        bid = m.bid(providers[0], capacity=8, price=P_DEAR)
        with reverts(settlement.DuplicateNonce, signer=buyers[0], nonce=a[0].nonce):
            m.settle([a, a2], [bid], [(0, 0, 2), (1, 0, 2)], {H100: P_DEAR})
    else:
        b = m.bid(providers[0], capacity=2, price=P_DEAR)
        b2 = m.bid(providers[0], capacity=2, nonce=b[0].nonce, price=P_DEAR - 1)
        o = m.order(buyers[0], units=4)
        with reverts(settlement.DuplicateNonce, signer=providers[0], nonce=b[0].nonce):
            m.settle([o], [b, b2], [(0, 0, 2), (0, 1, 2)], {H100: P_DEAR})
    # Listing the same message twice is the same case.
    o = m.order(buyers[1], units=2)
    bid = m.bid(providers[1], capacity=8, price=P_DEAR)
    with reverts(settlement.DuplicateNonce, signer=buyers[1], nonce=o[0].nonce):
        m.settle([o, o], [bid], [(0, 0, 2), (1, 0, 2)], {H100: P_DEAR})


def test_cancel_waits_for_the_notice_then_stops_the_partly_filled_message(funded, chain, settlement, buyers,
                                                                          providers, params):
    """Cancelling is announced: `cancelNonces` before the notice reverts `NoticeNotOver` (so a
    cancel cannot front-run a batch; the partly filled order still fills meanwhile), without an
    announcement `CancelNotRequested`; after the notice the nonce is void and the partly filled
    order cannot fill further (`NonceUsed`)."""
    m = funded
    buyer = buyers[0]
    a = m.order(buyer, units=4)
    bid = m.bid(providers[0], capacity=8, price=P_DEAR)
    m.settle([a], [bid], [(0, 0, 1)], {H100: P_DEAR})
    with reverts(settlement.CancelNotRequested, signer=buyer, nonce=a[0].nonce):
        settlement.cancelNonces([a[0].nonce], sender=buyer)

    t = head_time(chain) + 1
    at(chain, t)
    settlement.requestCancel([a[0].nonce], sender=buyer)
    assert settlement.cancelRequestedAt(buyer, a[0].nonce) == t
    assert settlement.isNonceCancelled(buyer, a[0].nonce)
    at(chain, t + params.notice_period - 1)
    with reverts(settlement.NoticeNotOver, readyAt=t + params.notice_period):
        settlement.cancelNonces([a[0].nonce], sender=buyer)
    m.settle([a], [bid], [(0, 0, 1)], {H100: P_DEAR})  # a batch in flight still lands

    # NOTE: the reverted call above was mined at t + notice - 1, so the settle took anvil's clock
    # (that block plus the wall time since), which on a loaded machine can already be past the notice.
    at_least(chain, t + params.notice_period)
    settlement.cancelNonces([a[0].nonce], sender=buyer)
    assert settlement.nonceState(buyer, a[0].nonce) == (True, True)
    assert settlement.remainingOf(digest(a[0], m), buyer, a[0].nonce, 4) == 0
    with reverts(settlement.NonceUsed, signer=buyer, nonce=a[0].nonce):
        m.settle([a], [bid], [(0, 0, 1)], {H100: P_DEAR})
    assert settlement.escrowOf(buyer).locked == 2 * P_DEAR * 2
