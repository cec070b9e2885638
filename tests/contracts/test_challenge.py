"""Matcher accountability on chain: receipts, the challenge with a witness lease, and matcher bonds.

The story of every challenge here: provider P's bid B was accepted (receipted) by the matcher into
round R, and in R a pricier bid W won a lease in B's market, for a duration B accepts, while B was
left unfilled or partly filled. P proves it with `challenge(R, receipt, B, witness)`.

Receipts are signed with the matcher's key, exactly as the off-chain matcher does. Every revert is
checked by name (and by selector when ape cannot decode it) through the strict `reverts` helper.
"""

from __future__ import annotations

from dataclasses import dataclass

import ape
import pytest
from eth_abi import encode
from eth_utils import keccak

from underbid.eip712 import Bid, Order, Receipt

from ..conftest import A100, H100, HOUR, UBC, UBT
from ..reverts import error_name as revert_error_name
from ..reverts import reverts

# ----------------------------------------------------------------------------------------------
# revert names
# ----------------------------------------------------------------------------------------------


def error_name(contract, call) -> str:
    """The name of the custom error `call()` reverts with (decoded by selector if ape cannot)."""
    with ape.reverts() as info:
        call()
    return revert_error_name(contract, info.value)


# ----------------------------------------------------------------------------------------------
# scenario helpers
# ----------------------------------------------------------------------------------------------

P_CHEAP = 1 * UBC  # the challenger's bid price
P_DEAR = 2 * UBC  # the witness bid's price, and the clearing price


def digest(message, m) -> bytes:
    return message.digest(m.domain)


def head_time(chain) -> int:
    return chain.blocks.head.timestamp


def sign_receipt(m, bid: Bid, round_id: int, issued_at: int, key=None) -> tuple[Receipt, bytes]:
    receipt = Receipt(bid_hash="0x" + digest(bid, m).hex(), round=round_id, issued_at=issued_at)
    return receipt, receipt.sign(key if key is not None else m.matcher.private_key, m.domain)


def bond(m, account, amount) -> None:
    m.give_ubt(account, amount)
    m.ubt.approve(m.settlement, amount, sender=account)
    m.settlement.bondMatcher(amount, sender=account)


@dataclass
class Scene:
    """A settled round R in which `bid` (receipted for R) is passed over while `witness` wins a
    lease for `order`. `challenge()` / `verify()` take the same overrides."""

    m: object
    round_id: int
    provider: object
    bid: tuple[Bid, bytes]
    receipt: tuple[Receipt, bytes]
    order: tuple[Order, bytes]
    witness: tuple[Bid, bytes]
    settled_at: int

    def args(self, *, round_id=None, receipt=None, bid=None, order=None, witness=None, order_digest=None) -> tuple:
        r, r_sig = receipt or self.receipt
        b, b_sig = bid or self.bid
        w, _ = witness or self.witness
        o_digest = order_digest if order_digest is not None else digest((order or self.order)[0], self.m)
        return (
            self.round_id if round_id is None else round_id,
            r.as_call_tuple(),
            r_sig,
            b.as_call_tuple(),
            b_sig,
            (o_digest, w.as_call_tuple()),
        )

    def challenge(self, sender=None, **overrides):
        return self.m.settlement.challenge(*self.args(**overrides), sender=sender or self.provider)

    def verify(self, **overrides):
        return self.m.settlement.verifyChallenge(*self.args(**overrides))

    @property
    def bid_digest(self) -> bytes:
        return digest(self.bid[0], self.m)


def pass_over(
    m,
    chain,
    provider,
    rival,
    buyer,
    *,
    round_id: int = 1,
    fill: int = 0,
    bid: dict | None = None,
    witness: dict | None = None,
    order: dict | None = None,
    issued_at: int | None = None,
    receipt_key=None,
    settle_at: int | None = None,
    sender=None,
) -> Scene:
    """Settles round `round_id`: `rival`'s dearer bid W serves 2 units of `buyer`'s order while
    `provider`'s cheaper receipted bid B (capacity 3) gets `fill` units of it (0: passed over)."""
    b = m.bid(provider, **{"capacity": 3, "price": P_CHEAP, "max_duration": 24 * HOUR, **(bid or {})})
    issued = head_time(chain) if issued_at is None else issued_at
    receipt = sign_receipt(m, b[0], round_id, issued, receipt_key)
    w = m.bid(rival, **{"capacity": 4, "price": P_DEAR, **(witness or {})})
    o = m.order(buyer, **{"units": 2 + fill, "duration": 2 * HOUR, "max_price": 3 * UBC, **(order or {})})
    market = o[0].market
    if settle_at is not None:
        chain.pending_timestamp = settle_at
    if fill:
        m.settle([o], [w, b], [(0, 0, 2), (0, 1, fill)], {market: max(w[0].price, P_CHEAP)}, round_id=round_id, sender=sender)
    else:
        m.settle([o], [w], [(0, 0, 2)], {market: w[0].price}, round_id=round_id, sender=sender)
    settled_at = m.settlement.rounds(round_id).settledAt
    assert settled_at > 0
    return Scene(m, round_id, provider, b, receipt, o, w, settled_at)


@pytest.fixture
def scene(funded, chain, buyers, providers) -> Scene:
    return pass_over(funded, chain, providers[0], providers[1], buyers[0])


# ----------------------------------------------------------------------------------------------
# a successful challenge
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fill", [0, 1, 2], ids=["dropped", "partly-filled-1", "partly-filled-2"])
def test_passed_over_bid_slashes_the_matcher(funded, chain, ubt, settlement, matcher, buyers, providers, params, fill):
    m = funded
    s = pass_over(m, chain, providers[0], providers[1], buyers[0], fill=fill)
    assert settlement.remainingOf(s.bid_digest, providers[0], s.bid[0].nonce, 3) == 3 - fill

    # The view runs every check and names who would be slashed.
    who, bid_digest = s.verify()
    assert who == matcher.address and bytes(bid_digest) == s.bid_digest

    bond0 = settlement.matchers(matcher).bond
    assert bond0 == params.min_matcher_bond
    supply0, burned0 = ubt.totalSupply(), settlement.totalSlashedBurned()
    balance0, held0 = ubt.balanceOf(providers[0]), ubt.balanceOf(settlement)

    tx = s.challenge()

    slashed = bond0 * params.matcher_slash_bps // 10_000
    to_challenger = slashed * params.challenger_share_bps // 10_000
    burned = slashed - to_challenger
    assert (slashed, to_challenger, burned) == (5_000 * UBT, 2_500 * UBT, 2_500 * UBT)
    assert settlement.matchers(matcher).bond == bond0 - slashed
    assert ubt.balanceOf(providers[0]) == balance0 + to_challenger
    assert ubt.balanceOf(settlement) == held0 - slashed
    assert ubt.totalSupply() == supply0 - burned
    assert settlement.totalSlashedBurned() == burned0 + burned

    [event] = tx.decode_logs(settlement.MatcherSlashed)
    assert event.matcher == matcher.address and event.round == s.round_id
    assert bytes(event.bidDigest) == s.bid_digest and event.challenger == providers[0].address
    assert (event.slashed, event.toChallenger, event.burned) == (slashed, to_challenger, burned)
    assert settlement.challenged(keccak(encode(["uint64", "bytes32"], [s.round_id, s.bid_digest])))

    # The slashed matcher is now under the minimum bond: it cannot settle until it tops up.
    assert not settlement.isBondedMatcher(matcher)
    with reverts(settlement.MatcherNotBonded, matcher=matcher):
        m.settle([m.order(buyers[1])], [m.bid(providers[2])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=2)
    bond(m, matcher, slashed)
    m.settle([m.order(buyers[1])], [m.bid(providers[2])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=2)


def test_each_passed_over_bid_is_its_own_challenge(funded, chain, ubt, settlement, matcher, buyers, providers, params):
    """Two cheaper receipted bids passed over in one round: each proves the round wrong once."""
    m = funded
    b1 = m.bid(providers[0], price=P_CHEAP)
    b2 = m.bid(providers[2], price=int(1.5 * UBC))
    r1 = sign_receipt(m, b1[0], 1, head_time(chain))
    r2 = sign_receipt(m, b2[0], 1, head_time(chain))
    w, o = m.bid(providers[1], price=P_DEAR), m.order(buyers[0], units=2)
    m.settle([o], [w], [(0, 0, 2)], {H100: P_DEAR}, round_id=1)
    s = Scene(m, 1, providers[0], b1, r1, o, w, settlement.rounds(1).settledAt)

    s.challenge()
    assert settlement.matchers(matcher).bond == params.min_matcher_bond // 2
    balance = ubt.balanceOf(providers[2])
    tx = s.challenge(bid=b2, receipt=r2, sender=providers[2])
    # The second slash takes the same share of what is left.
    assert settlement.matchers(matcher).bond == params.min_matcher_bond // 4
    assert ubt.balanceOf(providers[2]) == balance + params.min_matcher_bond // 8
    assert tx.decode_logs(settlement.MatcherSlashed)[0].slashed == params.min_matcher_bond // 4


def test_challenge_window_edges(scene, chain, settlement, params):
    closes = scene.settled_at + params.challenge_window
    chain.mine(timestamp=closes - 1)
    scene.verify()  # still open in the view
    chain.pending_timestamp = closes
    scene.challenge()  # the last second of the window
    assert settlement.matchers(scene.m.matcher).bond == params.min_matcher_bond // 2


def test_after_the_window(scene, chain, settlement, params):
    closes = scene.settled_at + params.challenge_window
    chain.pending_timestamp = closes + 1
    with reverts(settlement.ChallengeWindowClosed, round=scene.round_id, closedAt=closes):
        scene.challenge()
    chain.mine(timestamp=closes + 3600)
    with reverts(settlement.ChallengeWindowClosed, round=scene.round_id, closedAt=closes):
        scene.verify()
    assert settlement.matchers(scene.m.matcher).bond == params.min_matcher_bond


# ----------------------------------------------------------------------------------------------
# an honest round cannot be challenged
# ----------------------------------------------------------------------------------------------


def test_honest_round_fully_used_cheaper_bid(funded, chain, settlement, buyers, providers):
    """B (capacity 3) fully used, and only then the dearer W serves the rest of the order."""
    s = pass_over(funded, chain, providers[0], providers[1], buyers[0], fill=3)
    assert settlement.isNonceUsed(providers[0], s.bid[0].nonce)
    with reverts(settlement.BidFullyFilled, bidDigest=s.bid_digest):
        s.challenge()
    with reverts(settlement.BidFullyFilled, bidDigest=s.bid_digest):
        s.verify()


@pytest.mark.parametrize("witness_price", [P_CHEAP - 1, P_CHEAP], ids=["cheaper", "equal"])
def test_honest_round_winner_not_dearer(funded, chain, settlement, buyers, providers, witness_price):
    """B unfilled, but the winning bid is priced at or below B: nothing to swap."""
    s = pass_over(funded, chain, providers[0], providers[1], buyers[0], witness={"price": witness_price})
    with reverts(settlement.WitnessNotPricier, witnessPrice=witness_price, bidPrice=P_CHEAP):
        s.challenge()


def test_honest_round_every_receipted_bid_every_lease(funded, chain, settlement, buyers, providers):
    """A round cleared by hand as the exact optimum: cheapest bids first, the dearest bid only for
    an order too long for the cheaper ones, a second market; no (receipted bid, lease) proves it wrong."""
    m = funded
    t = head_time(chain)
    bids = [
        m.bid(providers[0], capacity=2, price=UBC, max_duration=2 * HOUR),
        m.bid(providers[1], capacity=3, price=int(1.5 * UBC), max_duration=2 * HOUR),
        m.bid(providers[2], capacity=2, price=2 * UBC, max_duration=8 * HOUR),
        m.bid(providers[3], capacity=1, price=int(1.2 * UBC), market=A100),
    ]
    receipts = [sign_receipt(m, b, 1, t) for b, _ in bids]
    orders = [
        m.order(buyers[0], units=4, duration=2 * HOUR, max_price=3 * UBC),
        m.order(buyers[1], units=1, duration=6 * HOUR, max_price=3 * UBC),
        m.order(buyers[2], units=1, duration=HOUR, max_price=3 * UBC, market=A100),
    ]
    tx = m.settle(orders, bids, [(0, 0, 2), (0, 1, 2), (1, 2, 1), (2, 3, 1)], {H100: 2 * UBC, A100: int(1.2 * UBC)})
    leases = list(tx.decode_logs(settlement.LeaseOpened))
    assert len(leases) == 4
    by_digest = {digest(b, m): (b, sig) for b, sig in bids}
    orders_by_digest = {digest(o, m): (o, sig) for o, sig in orders}
    seen = {}
    for (b, b_sig), receipt in zip(bids, receipts):
        provider = next(p for p in providers if p.address == b.provider)
        for lease in leases:
            scene = Scene(m, 1, provider, (b, b_sig), receipt, orders_by_digest[bytes(lease.orderDigest)],
                          by_digest[bytes(lease.bidDigest)], 0)
            name = error_name(settlement, scene.challenge)
            assert name == error_name(settlement, scene.verify)
            seen[(b.provider, lease.event_arguments["provider"])] = name  # (`.provider` is ape's)
    # Each pair fails for the reason the allocation makes true, never for a malformed proof.
    p = [x.address for x in providers]
    assert seen[(p[1], p[2])] == "WitnessDurationTooLong"  # the dear bid serves the 6 h order
    assert seen[(p[1], p[0])] == "WitnessNotPricier"
    assert seen[(p[2], p[3])] == "WitnessMarketMismatch"
    assert seen[(p[0], p[2])] == seen[(p[3], p[0])] == "BidFullyFilled"
    assert set(seen.values()) <= {"BidFullyFilled", "WitnessNotPricier", "WitnessDurationTooLong", "WitnessMarketMismatch"}
    assert settlement.matchers(m.matcher).bond == m.params.min_matcher_bond


# ----------------------------------------------------------------------------------------------
# each failure, by name
# ----------------------------------------------------------------------------------------------


def test_round_not_settled(funded, chain, settlement, buyers, providers):
    m = funded
    b = m.bid(providers[0], price=P_CHEAP)
    receipt = sign_receipt(m, b[0], 4, head_time(chain))
    o, w = m.order(buyers[0]), m.bid(providers[1], price=P_DEAR)
    # Batch 0 of round 4 lands with the witness lease, but the round is not closed yet.
    m.settle([o], [w], [(0, 0, 2)], {H100: P_DEAR}, round_id=4, final=False)
    s = Scene(m, 4, providers[0], b, receipt, o, w, 0)
    with reverts(settlement.RoundNotSettled, round=4):
        s.challenge()
    with reverts(settlement.RoundNotSettled, round=5):
        s.challenge(round_id=5, receipt=sign_receipt(m, b[0], 5, head_time(chain)))
    # The final batch closes the round, and the lease from batch 0 is a witness.
    m.settle([m.order(buyers[1])], [m.bid(providers[2], price=P_DEAR)], [(0, 0, 1)], {H100: P_DEAR}, round_id=4, batch=1)
    s.challenge()


def test_forged_receipt(scene, settlement, matcher, outsider):
    r, _ = scene.receipt
    forged = (r, r.sign(outsider.private_key, scene.m.domain))
    with reverts(settlement.SignerMismatch, expected=matcher, recovered=outsider):
        scene.challenge(receipt=forged)
    # A receipt whose fields were changed after signing recovers to nobody in particular.
    altered = (r.model_copy(update={"issued_at": r.issued_at - 100}), scene.receipt[1])
    with reverts(settlement.SignerMismatch, expected=matcher):
        scene.challenge(receipt=altered)
    with reverts(settlement.InvalidSignature):
        scene.challenge(receipt=(r, scene.receipt[1][:64]))


def test_receipt_from_another_matcher(funded, chain, settlement, matcher, buyers, providers, outsider, params):
    m = funded
    bond(m, outsider, params.min_matcher_bond)
    assert settlement.isBondedMatcher(outsider)
    # Round 1 is settled by the devnet matcher; the provider holds the other matcher's receipt.
    s = pass_over(m, chain, providers[0], providers[1], buyers[0], receipt_key=outsider.private_key)
    with reverts(settlement.SignerMismatch, expected=matcher, recovered=outsider):
        s.challenge()

    # Round 2 is settled by the other matcher: only its receipts bind it, and only it is slashed.
    s2 = pass_over(m, chain, providers[2], providers[3], buyers[1], round_id=2, sender=outsider)
    assert settlement.rounds(2).matcher == outsider.address
    with reverts(settlement.SignerMismatch, expected=outsider, recovered=matcher):
        s2.challenge()
    good = sign_receipt(m, s2.bid[0], 2, s2.receipt[0].issued_at, outsider.private_key)
    s2.challenge(receipt=good)
    assert settlement.matchers(outsider).bond == params.min_matcher_bond // 2
    assert settlement.matchers(matcher).bond == params.min_matcher_bond


def test_receipt_for_another_round(funded, chain, settlement, buyers, providers):
    m = funded
    s = pass_over(m, chain, providers[0], providers[1], buyers[0], round_id=1)
    # B is passed over again in round 2, but its receipt names round 1.
    o2, w2 = m.order(buyers[1]), m.bid(providers[2], price=P_DEAR)
    m.settle([o2], [w2], [(0, 0, 2)], {H100: P_DEAR}, round_id=2)
    with reverts(settlement.ReceiptRoundMismatch, receiptRound=1, round=2):
        s.challenge(round_id=2, order=o2, witness=w2)
    # A receipt for a later round does not prove round 1 either.
    later = sign_receipt(m, s.bid[0], 2, s.receipt[0].issued_at)
    with reverts(settlement.ReceiptRoundMismatch, receiptRound=2, round=1):
        s.challenge(receipt=later)
    s.challenge()


def test_receipt_for_another_bid(scene, chain, settlement, providers):
    m = scene.m
    other = m.bid(providers[0], price=P_CHEAP)
    # A genuine receipt for the provider's other bid does not cover this one...
    with reverts(settlement.ReceiptBidMismatch, receiptBidHash=digest(other[0], m), bidDigest=scene.bid_digest):
        scene.challenge(receipt=sign_receipt(m, other[0], 1, scene.receipt[0].issued_at))
    # ...nor does the receipt of this bid cover an altered copy of it (even one signed anew).
    cheaper = scene.bid[0].model_copy(update={"price": P_CHEAP - 1})
    with reverts(settlement.ReceiptBidMismatch, receiptBidHash=scene.bid_digest, bidDigest=digest(cheaper, m)):
        scene.challenge(bid=(cheaper, cheaper.sign(providers[0].private_key, m.domain)))


def test_bid_signature_by_someone_else(scene, settlement, providers, outsider):
    b = scene.bid[0]
    with reverts(settlement.SignerMismatch, expected=providers[0], recovered=outsider):
        scene.challenge(bid=(b, b.sign(outsider.private_key, scene.m.domain)))


def test_witness_from_another_market(funded, chain, settlement, buyers, providers):
    m = funded
    b = m.bid(providers[0], price=P_CHEAP)  # H100
    receipt = sign_receipt(m, b[0], 1, head_time(chain))
    o, w = m.order(buyers[0], market=A100), m.bid(providers[1], market=A100, price=P_DEAR)
    m.settle([o], [w], [(0, 0, 2)], {A100: P_DEAR}, round_id=1)
    s = Scene(m, 1, providers[0], b, receipt, o, w, settlement.rounds(1).settledAt)
    with reverts(settlement.WitnessMarketMismatch, witnessMarket=bytes.fromhex(A100[2:]), market=bytes.fromhex(H100[2:])):
        s.challenge()


def test_witness_from_another_round(funded, chain, settlement, buyers, providers):
    m = funded
    # Round 1: the dear bid W wins. Round 2: B is receipted and W's lease is offered as witness.
    o, w = m.order(buyers[0]), m.bid(providers[1], price=P_DEAR)
    m.settle([o], [w], [(0, 0, 2)], {H100: P_DEAR}, round_id=1)
    b = m.bid(providers[0], price=P_CHEAP)
    receipt = sign_receipt(m, b[0], 2, head_time(chain))
    m.settle([m.order(buyers[1])], [m.bid(providers[2], price=P_CHEAP)], [(0, 0, 1)], {H100: P_CHEAP}, round_id=2)
    s = Scene(m, 2, providers[0], b, receipt, o, w, settlement.rounds(2).settledAt)
    lease_in_2 = settlement.leaseIdOf(2, digest(o[0], m), digest(w[0], m))
    with reverts(settlement.WitnessNotInRound, leaseId=lease_in_2):
        s.challenge()
    # A made-up order digest names no lease either.
    with reverts(settlement.WitnessNotInRound):
        s.challenge(order_digest=b"\x11" * 32)


def test_witness_must_be_the_leases_own_bid(scene, settlement, providers):
    # The challenger cannot dress up the witness: a copy of W with another price hashes to another
    # lease id, which the round does not have.
    dearer = scene.witness[0].model_copy(update={"price": P_DEAR + 1})
    with reverts(settlement.WitnessNotInRound):
        scene.challenge(witness=(dearer, b""))


def test_witness_longer_than_max_duration(funded, chain, settlement, buyers, providers):
    m = funded
    short = pass_over(m, chain, providers[0], providers[1], buyers[0], round_id=1,
                      bid={"max_duration": 2 * HOUR - 1}, order={"duration": 2 * HOUR})
    with reverts(settlement.WitnessDurationTooLong, duration=2 * HOUR, maxDuration=2 * HOUR - 1):
        short.challenge()
    # Exactly the bid's maxDuration is a duration the bid accepts.
    exact = pass_over(m, chain, providers[2], providers[3], buyers[1], round_id=2,
                      bid={"max_duration": 2 * HOUR}, order={"duration": 2 * HOUR})
    exact.challenge()


def test_cancelled_bid(scene, settlement, providers):
    nonce = scene.bid[0].nonce
    settlement.cancelNonces(nonce >> 8, 1 << (nonce & 0xFF), sender=providers[0])
    with reverts(settlement.BidCancelled, provider=providers[0], nonce=nonce):
        scene.challenge()


def test_bid_cancelled_before_the_round(funded, chain, settlement, buyers, providers):
    m = funded
    b = m.bid(providers[0], price=P_CHEAP)
    settlement.cancelNonces(b[0].nonce >> 8, 1 << (b[0].nonce & 0xFF), sender=providers[0])
    receipt = sign_receipt(m, b[0], 1, head_time(chain))
    o, w = m.order(buyers[0]), m.bid(providers[1], price=P_DEAR)
    m.settle([o], [w], [(0, 0, 2)], {H100: P_DEAR}, round_id=1)
    s = Scene(m, 1, providers[0], b, receipt, o, w, settlement.rounds(1).settledAt)
    with reverts(settlement.BidCancelled, provider=providers[0], nonce=b[0].nonce):
        s.challenge()


def test_bid_expired_before_the_round(funded, chain, settlement, buyers, providers):
    m = funded
    t = head_time(chain) + 100
    expired = pass_over(m, chain, providers[0], providers[1], buyers[0], round_id=1,
                        bid={"deadline": t - 1}, settle_at=t)
    assert expired.settled_at == t
    with reverts(settlement.BidExpiredBeforeRound, deadline=t - 1, settledAt=t):
        expired.challenge()
    # A bid valid up to the settlement's own second could have been filled in it.
    t2 = t + 100
    live = pass_over(m, chain, providers[2], providers[3], buyers[1], round_id=2, bid={"deadline": t2}, settle_at=t2)
    live.challenge()


def test_bid_fully_filled_after_the_round(scene, chain, settlement, buyers, providers):
    m = scene.m
    # B fills completely in round 2: the provider has been served; round 1 can no longer be proven.
    m.settle([m.order(buyers[1], units=3)], [scene.bid], [(0, 0, 3)], {H100: P_CHEAP}, round_id=2)
    with reverts(settlement.BidFullyFilled, bidDigest=scene.bid_digest):
        scene.challenge()


def test_stake_decreased_after_the_receipt(funded, chain, settlement, buyers, providers):
    m = funded
    issued = head_time(chain) + 50
    chain.mine(timestamp=issued)
    s = pass_over(m, chain, providers[0], providers[1], buyers[0], issued_at=issued)
    # The provider asks to unstake one unit's worth after the receipt.
    chain.pending_timestamp = s.settled_at + 10
    settlement.requestUnstake(m.params.stake_per_unit, sender=providers[0])
    with reverts(settlement.StakeDecreasedAfterReceipt, decreasedAt=s.settled_at + 10, issuedAt=issued):
        s.challenge()


def test_stake_decrease_in_the_receipts_second(funded, chain, settlement, buyers, providers):
    m = funded
    t = head_time(chain) + 50
    chain.pending_timestamp = t
    settlement.requestUnstake(m.params.stake_per_unit, sender=providers[0])
    # The matcher read the stake in this second: a decrease then counts as after the receipt.
    s = pass_over(m, chain, providers[0], providers[1], buyers[0], issued_at=t)
    with reverts(settlement.StakeDecreasedAfterReceipt, decreasedAt=t, issuedAt=t):
        s.challenge()


def test_stake_decrease_before_the_receipt_is_fine(funded, chain, settlement, buyers, providers):
    m = funded
    t = head_time(chain) + 50
    chain.pending_timestamp = t
    settlement.requestUnstake(m.params.stake_per_unit, sender=providers[0])
    s = pass_over(m, chain, providers[0], providers[1], buyers[0], issued_at=t + 1)
    s.challenge()
    assert settlement.matchers(m.matcher).bond == m.params.min_matcher_bond // 2


def test_receipt_dated_zero_proves_nothing(scene, settlement):
    """A receipt claiming to predate every stake change is refused for any provider, even one
    whose stake never moved: providers must check `issuedAt` when they get a receipt."""
    assert settlement.providers(scene.provider).stakeDecreasedAt == 0
    r = scene.receipt[0].model_copy(update={"issued_at": 0})
    with reverts(settlement.StakeDecreasedAfterReceipt, decreasedAt=0, issuedAt=0):
        scene.challenge(receipt=(r, r.sign(scene.m.matcher.private_key, scene.m.domain)))


def test_stake_slashed_after_the_receipt(funded, chain, settlement, buyers, providers, outsider, params):
    m = funded
    # Provider 0 runs a lease from round 1 and misses its heartbeats.
    tx = m.settle([m.order(buyers[2], units=1)], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=1)
    [lease_id] = m.lease_ids(tx)
    s = pass_over(m, chain, providers[0], providers[1], buyers[0], round_id=2)
    slash_at = max(settlement.faultReportableAt(lease_id), head_time(chain) + 1)
    assert slash_at < s.settled_at + params.challenge_window
    chain.pending_timestamp = slash_at
    settlement.reportFault(lease_id, sender=outsider)
    assert settlement.providers(providers[0]).stakeDecreasedAt == slash_at
    with reverts(settlement.StakeDecreasedAfterReceipt, decreasedAt=slash_at, issuedAt=s.receipt[0].issued_at):
        s.challenge()


def test_second_challenge_of_the_same_round_and_bid(funded, chain, settlement, buyers, providers, params):
    m = funded
    s = pass_over(m, chain, providers[0], providers[1], buyers[0])
    s.challenge()
    with reverts(settlement.AlreadyChallenged, round=1, bidDigest=s.bid_digest):
        s.challenge()
    with reverts(settlement.AlreadyChallenged, round=1, bidDigest=s.bid_digest):
        s.verify()
    assert settlement.matchers(m.matcher).bond == params.min_matcher_bond // 2


def test_second_challenge_with_another_witness(funded, chain, settlement, buyers, providers, params):
    m = funded
    b = m.bid(providers[0], price=P_CHEAP)
    receipt = sign_receipt(m, b[0], 1, head_time(chain))
    o1, w1 = m.order(buyers[0], units=1), m.bid(providers[1], price=P_DEAR)
    o2, w2 = m.order(buyers[1], units=1), m.bid(providers[2], price=P_DEAR)
    m.settle([o1, o2], [w1, w2], [(0, 0, 1), (1, 1, 1)], {H100: P_DEAR}, round_id=1)
    s = Scene(m, 1, providers[0], b, receipt, o1, w1, settlement.rounds(1).settledAt)
    s.challenge()
    with reverts(settlement.AlreadyChallenged, round=1, bidDigest=s.bid_digest):
        s.challenge(order=o2, witness=w2)
    assert settlement.matchers(m.matcher).bond == params.min_matcher_bond // 2


def test_only_the_bids_provider_collects(scene, ubt, settlement, outsider, providers, params):
    # Anyone may run the check as a view...
    assert scene.verify()[0] == scene.m.matcher.address
    # ...but only the bid's provider may challenge with it.
    with reverts(settlement.NotBidProvider, caller=outsider, provider=providers[0]):
        scene.challenge(sender=outsider)
    with reverts(settlement.NotBidProvider, caller=providers[1], provider=providers[0]):
        scene.challenge(sender=providers[1])
    assert settlement.matchers(scene.m.matcher).bond == params.min_matcher_bond


# ----------------------------------------------------------------------------------------------
# matcher bonds
# ----------------------------------------------------------------------------------------------


def test_bond_matcher(market, ubt, settlement, outsider, params):
    m = market
    with reverts(settlement.ZeroAmount):
        settlement.bondMatcher(0, sender=outsider)
    m.give_ubt(outsider, params.min_matcher_bond)
    ubt.approve(settlement, params.min_matcher_bond, sender=outsider)
    held = ubt.balanceOf(settlement)
    tx = settlement.bondMatcher(params.min_matcher_bond - 1, sender=outsider)
    [event] = tx.decode_logs(settlement.MatcherBonded)
    assert (event.matcher, event.amount, event.bond) == (outsider.address, params.min_matcher_bond - 1, params.min_matcher_bond - 1)
    assert not settlement.isBondedMatcher(outsider)
    settlement.bondMatcher(1, sender=outsider)
    assert settlement.isBondedMatcher(outsider)
    assert settlement.matchers(outsider).bond == params.min_matcher_bond
    assert ubt.balanceOf(settlement) == held + params.min_matcher_bond
    assert ubt.balanceOf(outsider) == 0


def test_matcher_exit_and_withdrawal(funded, chain, ubt, settlement, matcher, outsider, buyers, providers, params):
    m = funded
    with reverts(settlement.MatcherNotBonded, matcher=outsider):
        settlement.requestMatcherExit(sender=outsider)
    with reverts(settlement.ExitNotRequested, matcher=matcher):
        settlement.withdrawMatcherBond(sender=matcher)

    t = head_time(chain) + 10
    chain.pending_timestamp = t
    tx = settlement.requestMatcherExit(sender=matcher)
    exit_at = t + params.matcher_exit_delay
    assert tx.decode_logs(settlement.MatcherExitRequested)[0].exitAt == exit_at
    assert settlement.matchers(matcher).exitAt == exit_at
    assert not settlement.isBondedMatcher(matcher)

    # An exiting matcher settles nothing, and can neither leave twice nor add to its bond.
    with reverts(settlement.MatcherNotBonded, matcher=matcher):
        m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})
    with reverts(settlement.MatcherExiting, matcher=matcher):
        settlement.requestMatcherExit(sender=matcher)
    m.give_ubt(matcher, UBT)
    ubt.approve(settlement, UBT, sender=matcher)
    with reverts(settlement.MatcherExiting, matcher=matcher):
        settlement.bondMatcher(UBT, sender=matcher)

    chain.pending_timestamp = exit_at - 1
    with reverts(settlement.ExitDelayNotOver, exitAt=exit_at):
        settlement.withdrawMatcherBond(sender=matcher)
    balance = ubt.balanceOf(matcher)
    chain.pending_timestamp = exit_at
    tx = settlement.withdrawMatcherBond(sender=matcher)
    assert tx.decode_logs(settlement.MatcherBondWithdrawn)[0].amount == params.min_matcher_bond
    assert ubt.balanceOf(matcher) == balance + params.min_matcher_bond
    assert settlement.matchers(matcher).bond == 0 and settlement.matchers(matcher).exitAt == 0
    with reverts(settlement.ExitNotRequested, matcher=matcher):
        settlement.withdrawMatcherBond(sender=matcher)
    # Having left, it may bond again and settle.
    bond(m, matcher, params.min_matcher_bond)
    m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})


def test_leaving_does_not_escape_a_challenge(funded, chain, ubt, settlement, matcher, buyers, providers, params):
    m = funded
    assert params.matcher_exit_delay > params.challenge_window
    s = pass_over(m, chain, providers[0], providers[1], buyers[0])
    # The matcher asks to leave right after settling the round.
    chain.pending_timestamp = s.settled_at + 1
    settlement.requestMatcherExit(sender=matcher)
    exit_at = s.settled_at + 1 + params.matcher_exit_delay
    closes = s.settled_at + params.challenge_window
    assert exit_at > closes
    # Its bond cannot leave while the round can still be challenged...
    chain.pending_timestamp = closes
    with reverts(settlement.ExitDelayNotOver, exitAt=exit_at):
        settlement.withdrawMatcherBond(sender=matcher)
    # ...and in the window's last second the challenge still slashes it.
    chain.pending_timestamp = closes
    s.challenge()
    chain.pending_timestamp = exit_at
    balance = ubt.balanceOf(matcher)
    settlement.withdrawMatcherBond(sender=matcher)
    assert ubt.balanceOf(matcher) == balance + params.min_matcher_bond // 2


def test_a_challenge_after_the_exit_delay_finds_the_window_closed(funded, chain, settlement, matcher, buyers, providers, params):
    m = funded
    s = pass_over(m, chain, providers[0], providers[1], buyers[0])
    chain.pending_timestamp = s.settled_at + 1
    settlement.requestMatcherExit(sender=matcher)
    chain.pending_timestamp = s.settled_at + 1 + params.matcher_exit_delay
    settlement.withdrawMatcherBond(sender=matcher)
    with reverts(settlement.ChallengeWindowClosed, round=1):
        s.challenge()


def test_exit_delay_must_outlast_the_challenge_window(settlement, deployer, params):
    p = params.core_params()
    window = p[6]
    assert p[7] == params.matcher_exit_delay > window
    with reverts(settlement.InvalidParameter, name="matcherExitDelay"):
        settlement.setParams(p[:7] + (window,) + p[8:], sender=deployer)
    with reverts(settlement.InvalidParameter, name="challengeWindow"):
        settlement.setParams(p[:6] + (0,) + p[7:], sender=deployer)
    settlement.setParams(p[:7] + (window + 1,) + p[8:], sender=deployer)
    assert settlement.params().matcherExitDelay == window + 1


# ----------------------------------------------------------------------------------------------
# soundness across matchers
# ----------------------------------------------------------------------------------------------


def test_stake_locked_by_another_matchers_round_voids_the_receipt(funded, chain, settlement, matcher, buyers, providers, outsider, params):
    """An honest matcher must not be slashable for a bid it could not fill.

    Provider 0 (8 units of stake) gets bid B (8 units) receipted by the devnet matcher for round 1.
    Before round 1 settles, a second bonded matcher settles the provider's other bid B' for all 8
    units: the stake is now locked, so no matcher can fill B any more (`settle` would revert
    `InsufficientFreeStake`). The devnet matcher then clears round 1 honestly without B, and a
    dearer bid wins in B's market. The stake never *decreased* (it was locked), so nothing in the
    receipt's conditions rules the challenge out; yet the allocation was the only feasible one.
    """
    m = funded
    bond(m, outsider, params.min_matcher_bond)
    b = m.bid(providers[0], capacity=8, price=P_CHEAP)
    receipt = sign_receipt(m, b[0], 1, head_time(chain))

    other = m.bid(providers[0], capacity=8, price=P_CHEAP)
    m.settle([m.order(buyers[2], units=8)], [other], [(0, 0, 8)], {H100: P_CHEAP}, round_id=100, sender=outsider)
    assert settlement.freeStake(providers[0]) == 0
    # B cannot be filled by anyone now.
    with reverts(settlement.InsufficientFreeStake, provider=providers[0]):
        m.settle([m.order(buyers[1], units=1)], [b], [(0, 0, 1)], {H100: P_CHEAP}, round_id=1)

    o, w = m.order(buyers[0]), m.bid(providers[1], price=P_DEAR)
    m.settle([o], [w], [(0, 0, 2)], {H100: P_DEAR}, round_id=1)
    s = Scene(m, 1, providers[0], b, receipt, o, w, settlement.rounds(1).settledAt)
    with reverts(settlement.StakeLockedByOtherMatcher, provider=providers[0]):
        s.challenge()
    assert settlement.matchers(matcher).bond == params.min_matcher_bond
