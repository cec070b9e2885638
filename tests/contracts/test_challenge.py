"""Matcher accountability on chain: receipts, the challenge with a witness lease, and matcher bonds.

The story of every challenge here: provider P's bid B was accepted (receipted) by the matcher for
its rounds from R on, and in a final round R' >= R a pricier bid W won a lease in B's market, for a
duration B accepts, while B had a unit to spare (the spare-unit proof), or while B got a strictly
shorter lease of its own in R' (the swap proof). P proves it to the `MatcherCourt` with
`court.challenge(receipt, receiptSig, B, BSig, (R', order digest, W), ownOrderDigest, fillProof)`
(`fillProof`: a lease of B, only when B was used up by its first fill and so has no fill record).

Receipts are signed with the matcher's receipt signer (the matcher account itself here), exactly as
the off-chain matcher does. Every revert is checked by name (and by selector when ape cannot decode
it) through the strict `reverts` helper.
"""

from __future__ import annotations

from dataclasses import dataclass

import ape
import pytest
from eth_abi import encode
from eth_utils import keccak

from underbid.protocol.eip712 import Bid, Order, Receipt

from ..conftest import A100, H100, HOUR, UBC, UBT
from ..governance import through_timelock
from ..reverts import error_name as revert_error_name
from ..reverts import reverts

NO_SWAP = b"\x00" * 32
NO_FILL_PROOF = (0, b"\x00" * 32)  # the spare-unit proof of a bid with a fill record, or never filled

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


def court_of(m):
    return ape.project.MatcherCourt.at(m.settlement.court())


def sign_receipt(m, bid: Bid, round_id: int, issued_at: int, key=None, matcher=None) -> tuple[Receipt, bytes]:
    """The receipt of `matcher` (default: the test matcher) for `bid`, signed with `key` (default: the matcher's)."""
    matcher = matcher or m.matcher
    receipt = Receipt(
        matcher=str(matcher.address), bid_hash="0x" + digest(bid, m).hex(), round=round_id, issued_at=issued_at
    )
    return receipt, receipt.sign(key if key is not None else matcher.private_key, m.domain)


def bond(m, account, amount) -> None:
    m.give_ubt(account, amount)
    m.ubt.approve(m.settlement, amount, sender=account)
    m.settlement.bondMatcher(amount, account, sender=account)


def lease_start(m, tx, order, bid) -> int:
    [log] = [
        log for log in tx.decode_logs(m.settlement.LeaseOpened)
        if bytes(log.orderDigest) == digest(order[0], m) and bytes(log.bidDigest) == digest(bid[0], m)
    ]
    return log.start


@dataclass
class Scene:
    """A final round in which `bid` (receipted) is passed over while `witness` wins a lease for
    `order` starting at `start`. `challenge()` / `verify()` take the same overrides."""

    m: object
    round_id: int
    provider: object
    bid: tuple[Bid, bytes]
    receipt: tuple[Receipt, bytes]
    order: tuple[Order, bytes]
    witness: tuple[Bid, bytes]
    start: int
    # (round, order digest) of a lease of `bid`, as an honest challenger names one: the court needs
    # it only when `bid` was used up by its first fill (then it has no fill record).
    fill_lease: tuple[int, bytes] | None = None

    def args(
        self, *, round_id=None, receipt=None, bid=None, order=None, witness=None, order_digest=None, own=None,
        fill=None,
    ) -> tuple:
        r, r_sig = receipt or self.receipt
        b, b_sig = bid or self.bid
        w, _ = witness or self.witness
        o_digest = order_digest if order_digest is not None else digest((order or self.order)[0], self.m)
        return (
            r.as_call_tuple(),
            r_sig,
            b.as_call_tuple(),
            b_sig,
            (self.round_id if round_id is None else round_id, o_digest, w.as_call_tuple()),
            NO_SWAP if own is None else own,
            fill if fill is not None else (self.fill_lease or NO_FILL_PROOF),
        )

    def challenge(self, sender=None, **overrides):
        return court_of(self.m).challenge(*self.args(**overrides), sender=sender or self.provider)

    def verify(self, **overrides):
        return court_of(self.m).verifyChallenge(*self.args(**overrides))

    @property
    def bid_digest(self) -> bytes:
        return digest(self.bid[0], self.m)

    @property
    def closes(self) -> int:
        """The last second a challenge naming this witness lease can be made."""
        return self.start + self.m.params.max_round_span + self.m.params.challenge_window


def pass_over(
    m,
    chain,
    provider,
    rival,
    buyer,
    *,
    round_id: int | None = None,
    fill: int = 0,
    bid: dict | None = None,
    witness: dict | None = None,
    order: dict | None = None,
    issued_at: int | None = None,
    receipt_key=None,
    settle_at: int | None = None,
    sender=None,
) -> Scene:
    """Settles a final round `round_id` (default: the next) of `sender` (default: the test matcher):
    `rival`'s dearer bid W serves 2 units of `buyer`'s order while `provider`'s cheaper receipted
    bid B (capacity 3) gets `fill` units of it (0: passed over). Messages name `sender`."""
    who = sender or m.matcher
    names = {"matcher": str(who.address)}
    rid = m.next_round(who) if round_id is None else round_id
    b = m.bid(provider, **{**names, "capacity": 3, "price": P_CHEAP, "max_duration": 24 * HOUR, **(bid or {})})
    issued = head_time(chain) if issued_at is None else issued_at
    receipt = sign_receipt(m, b[0], rid, issued, receipt_key, matcher=who)
    w = m.bid(rival, **{**names, "capacity": 4, "price": P_DEAR, **(witness or {})})
    o = m.order(buyer, **{**names, "units": 2 + fill, "duration": 2 * HOUR, "max_price": 3 * UBC, **(order or {})})
    market = o[0].market
    if settle_at is not None:
        chain.pending_timestamp = settle_at
    if fill:
        tx = m.settle(
            [o], [w, b], [(0, 0, 2), (0, 1, fill)], {market: max(w[0].price, P_CHEAP)}, round_id=rid, sender=sender
        )
    else:
        tx = m.settle([o], [w], [(0, 0, 2)], {market: w[0].price}, round_id=rid, sender=sender)
    assert m.settlement.isRoundFinal(who, rid)
    own = (rid, digest(o[0], m)) if fill else None
    return Scene(m, rid, provider, b, receipt, o, w, lease_start(m, tx, o, w), own)


def accounts_of(m, matcher, accounts, n=2):
    """`n` fresh accounts (no other test role) bound to `matcher`; the first funded as a buyer,
    the others staked as providers."""
    fresh = list(accounts[20:20 + n])
    m.fund_buyer(fresh[0], 1_000 * UBC, matcher=matcher)
    for provider in fresh[1:]:
        m.stake_provider(provider, 8, matcher=matcher)
    return fresh


@pytest.fixture
def scene(funded, chain, buyers, providers) -> Scene:
    return pass_over(funded, chain, providers[0], providers[1], buyers[0])


# ----------------------------------------------------------------------------------------------
# a successful challenge
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fill", [0, 1, 2], ids=["dropped", "partly-filled-1", "partly-filled-2"])
def test_passed_over_bid_slashes_the_matcher(
    funded, chain, ubt, settlement, court, matcher, buyers, providers, params, fill
):
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

    [event] = tx.decode_logs(court.MatcherSlashed)
    assert event.matcher == matcher.address and event.round == s.round_id
    assert bytes(event.bidDigest) == s.bid_digest and event.challenger == providers[0].address
    assert (event.slashed, event.toChallenger, event.burned) == (slashed, to_challenger, burned)
    assert court.challenged(
        keccak(encode(["address", "uint64", "bytes32"], [matcher.address, s.round_id, s.bid_digest]))
    )

    # The slashed matcher is now under the minimum bond: it cannot settle until it tops up.
    assert not settlement.isBondedMatcher(matcher)
    with reverts(settlement.MatcherNotBonded, matcher=matcher):
        m.settle([m.order(buyers[1])], [m.bid(providers[2])], [(0, 0, 1)], {H100: 2 * UBC})
    bond(m, matcher, slashed)
    m.settle([m.order(buyers[1])], [m.bid(providers[2])], [(0, 0, 1)], {H100: 2 * UBC})


def test_only_the_court_slashes(scene, settlement, matcher, outsider, params):
    with reverts(settlement.UnauthorizedCaller, caller=outsider):
        settlement.slashMatcher(matcher, outsider, sender=outsider)
    with reverts(settlement.UnauthorizedCaller, caller=matcher):
        settlement.slashMatcher(matcher, matcher, sender=matcher)
    assert settlement.matchers(matcher).bond == params.min_matcher_bond


def test_each_passed_over_bid_is_its_own_challenge(
    funded, chain, ubt, settlement, court, matcher, buyers, providers, params
):
    """Two cheaper receipted bids passed over in one round: each proves the round wrong once."""
    m = funded
    b1 = m.bid(providers[0], price=P_CHEAP)
    b2 = m.bid(providers[2], price=int(1.5 * UBC))
    r1 = sign_receipt(m, b1[0], 1, head_time(chain))
    r2 = sign_receipt(m, b2[0], 1, head_time(chain))
    w, o = m.bid(providers[1], price=P_DEAR), m.order(buyers[0], units=2)
    tx = m.settle([o], [w], [(0, 0, 2)], {H100: P_DEAR}, round_id=1)
    s = Scene(m, 1, providers[0], b1, r1, o, w, lease_start(m, tx, o, w))

    s.challenge()
    assert settlement.matchers(matcher).bond == params.min_matcher_bond // 2
    balance = ubt.balanceOf(providers[2])
    tx = s.challenge(bid=b2, receipt=r2, sender=providers[2])
    # The second slash takes the same share of what is left.
    assert settlement.matchers(matcher).bond == params.min_matcher_bond // 4
    assert ubt.balanceOf(providers[2]) == balance + params.min_matcher_bond // 8
    assert tx.decode_logs(court.MatcherSlashed)[0].slashed == params.min_matcher_bond // 4


def test_a_receipt_covers_later_rounds_too(funded, chain, settlement, court, matcher, buyers, providers, params):
    """A receipt admits the bid from its round on: a later final round that passes it over is proof too."""
    m = funded
    b = m.bid(providers[0], price=P_CHEAP)
    receipt = sign_receipt(m, b[0], 1, head_time(chain))
    m.settle(
        [m.order(buyers[1], units=1)], [m.bid(providers[2], price=P_CHEAP)], [(0, 0, 1)], {H100: P_CHEAP}, round_id=1
    )
    o, w = m.order(buyers[0]), m.bid(providers[1], price=P_DEAR)
    tx = m.settle([o], [w], [(0, 0, 2)], {H100: P_DEAR}, round_id=2)
    s = Scene(m, 2, providers[0], b, receipt, o, w, lease_start(m, tx, o, w))
    s.challenge()
    assert settlement.matchers(matcher).bond == params.min_matcher_bond // 2


def test_challenge_window_edges(scene, chain, settlement, params):
    closes = scene.closes
    assert closes == scene.start + params.max_round_span + params.challenge_window
    chain.mine(timestamp=closes - 1)
    scene.verify()  # still open in the view
    chain.pending_timestamp = closes
    scene.challenge()  # the last second of the window
    assert settlement.matchers(scene.m.matcher).bond == params.min_matcher_bond // 2


def test_after_the_window(scene, chain, settlement, court, params):
    closes = scene.closes
    chain.pending_timestamp = closes + 1
    with reverts(court.ChallengeWindowClosed, round=scene.round_id, closedAt=closes):
        scene.challenge()
    chain.mine(timestamp=closes + 3600)
    with reverts(court.ChallengeWindowClosed, round=scene.round_id, closedAt=closes):
        scene.verify()
    assert settlement.matchers(scene.m.matcher).bond == params.min_matcher_bond


def test_window_of_a_later_batch_runs_from_its_own_lease(funded, chain, settlement, court, buyers, providers, params):
    """A witness from a later batch of a round is challengeable for the window after its own start."""
    m = funded
    b = m.bid(providers[0], price=P_CHEAP)
    receipt = sign_receipt(m, b[0], 1, head_time(chain))
    m.settle(
        [m.order(buyers[1], units=1)],
        [m.bid(providers[2], price=P_CHEAP)],
        [(0, 0, 1)],
        {H100: P_DEAR},
        round_id=1,
        final=False,
    )
    opened = settlement.rounds(m.matcher, 1).openedAt
    chain.pending_timestamp = opened + params.max_round_span
    o, w = m.order(buyers[0]), m.bid(providers[1], price=P_DEAR)
    tx = m.settle([o], [w], [(0, 0, 2)], {H100: P_DEAR}, round_id=1, batch=1)
    s = Scene(m, 1, providers[0], b, receipt, o, w, lease_start(m, tx, o, w))
    assert s.start == opened + params.max_round_span
    (closes, start, end) = settlement.challengeTermsOf(
        settlement.leaseIdOf(m.matcher, 1, digest(o[0], m), digest(w[0], m))
    )
    assert (closes, start, end - start) == (s.closes, s.start, 2 * HOUR)
    chain.pending_timestamp = s.closes
    s.challenge()


# ----------------------------------------------------------------------------------------------
# the swap proof: the cheaper bid got a strictly shorter lease in the same round
# ----------------------------------------------------------------------------------------------


def swap_scene(m, chain, buyers, providers, *, own_duration, witness_duration):
    """Round 1: B (cheap, capacity 1) serves a 1-unit order for `own_duration`; the dearer W serves
    another for `witness_duration`."""
    b = m.bid(providers[0], capacity=1, price=P_CHEAP, max_duration=24 * HOUR)
    receipt = sign_receipt(m, b[0], 1, head_time(chain))
    w = m.bid(providers[1], capacity=1, price=P_DEAR)
    own = m.order(buyers[0], units=1, duration=own_duration)
    theirs = m.order(buyers[1], units=1, duration=witness_duration)
    tx = m.settle([own, theirs], [b, w], [(0, 0, 1), (1, 1, 1)], {H100: P_DEAR}, round_id=1)
    return Scene(m, 1, providers[0], b, receipt, theirs, w, lease_start(m, tx, theirs, w)), own


def test_swap_proof_slashes_the_matcher(funded, chain, settlement, court, matcher, buyers, providers, params):
    m = funded
    s, own = swap_scene(m, chain, buyers, providers, own_duration=HOUR, witness_duration=2 * HOUR)
    # B is used up (by its first fill: its own lease proves the round), so the spare-unit proof fails...
    with reverts(court.BidFullyFilled, bidDigest=s.bid_digest):
        s.challenge(fill=(1, digest(own[0], m)))
    # ...but B's own lease is shorter than W's: swapping them gains (2 h - 1 h) x (W - B).
    who, _ = s.verify(own=digest(own[0], m))
    assert who == matcher.address
    tx = s.challenge(own=digest(own[0], m))
    assert tx.decode_logs(court.MatcherSlashed)[0].round == 1
    assert settlement.matchers(matcher).bond == params.min_matcher_bond // 2
    with reverts(court.AlreadyChallenged, round=1, bidDigest=s.bid_digest):
        s.challenge(own=digest(own[0], m))


@pytest.mark.parametrize("own_hours", [2, 3], ids=["equal", "longer"])
def test_swap_not_shorter(funded, chain, settlement, court, buyers, providers, params, own_hours):
    m = funded
    s, own = swap_scene(m, chain, buyers, providers, own_duration=own_hours * HOUR, witness_duration=2 * HOUR)
    with reverts(court.SwapNotShorter, ownDuration=own_hours * HOUR, witnessDuration=2 * HOUR):
        s.challenge(own=digest(own[0], m))
    assert settlement.matchers(m.matcher).bond == params.min_matcher_bond


def test_swap_needs_the_bids_own_lease(funded, chain, settlement, court, buyers, providers):
    m = funded
    s, own = swap_scene(m, chain, buyers, providers, own_duration=HOUR, witness_duration=2 * HOUR)
    # The witness order is not an order B served.
    lease = settlement.leaseIdOf(m.matcher, 1, digest(s.order[0], m), s.bid_digest)
    with reverts(court.WitnessNotInRound, leaseId=lease):
        s.challenge(own=digest(s.order[0], m))


# ----------------------------------------------------------------------------------------------
# an honest round cannot be challenged
# ----------------------------------------------------------------------------------------------


def test_honest_round_fully_used_cheaper_bid(court, funded, chain, settlement, buyers, providers):
    """B (capacity 3) fully used, and only then the dearer W serves the rest of the order."""
    s = pass_over(funded, chain, providers[0], providers[1], buyers[0], fill=3)
    assert settlement.isNonceUsed(providers[0], s.bid[0].nonce)
    with reverts(court.BidFullyFilled, bidDigest=s.bid_digest):
        s.challenge()
    with reverts(court.BidFullyFilled, bidDigest=s.bid_digest):
        s.verify()


@pytest.mark.parametrize("witness_price", [P_CHEAP - 1, P_CHEAP], ids=["cheaper", "equal"])
def test_honest_round_winner_not_dearer(court, funded, chain, settlement, buyers, providers, witness_price):
    """B unfilled, but the winning bid is priced at or below B: nothing to swap."""
    s = pass_over(funded, chain, providers[0], providers[1], buyers[0], witness={"price": witness_price})
    with reverts(court.WitnessNotPricier, witnessPrice=witness_price, bidPrice=P_CHEAP):
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
    for (b, b_sig), receipt in zip(bids, receipts, strict=True):
        provider = next(p for p in providers if p.address == b.provider)
        mine = [x for x in leases if bytes(x.bidDigest) == digest(b, m)]
        fill = (1, bytes(mine[0].orderDigest)) if mine else None  # as an honest challenger names it
        for lease in leases:
            scene = Scene(m, 1, provider, (b, b_sig), receipt, orders_by_digest[bytes(lease.orderDigest)],
                          by_digest[bytes(lease.bidDigest)], lease.start, fill)
            name = error_name(settlement, scene.challenge)
            assert name == error_name(settlement, scene.verify)
            seen[(b.provider, lease.event_arguments["provider"])] = name  # (`.provider` is ape's)
    # Each pair fails for the reason the allocation makes true, never for a malformed proof.
    p = [x.address for x in providers]
    assert seen[(p[1], p[2])] == "WitnessDurationTooLong"  # the dear bid serves the 6 h order
    assert seen[(p[1], p[0])] == "WitnessNotPricier"
    assert seen[(p[2], p[3])] == "WitnessMarketMismatch"
    # The witness's terms are checked before the bid's spare unit.
    assert seen[(p[0], p[2])] == "WitnessDurationTooLong"
    assert seen[(p[3], p[0])] == "WitnessMarketMismatch"
    assert seen[(p[0], p[1])] == "BidFullyFilled"  # the cheapest bid was used up first
    assert set(seen.values()) <= {
        "BidFullyFilled",
        "WitnessNotPricier",
        "WitnessDurationTooLong",
        "WitnessMarketMismatch",
    }
    assert settlement.matchers(m.matcher).bond == m.params.min_matcher_bond


# ----------------------------------------------------------------------------------------------
# each failure, by name
# ----------------------------------------------------------------------------------------------


def test_round_not_final(funded, chain, settlement, court, buyers, providers):
    m = funded
    b = m.bid(providers[0], price=P_CHEAP)
    receipt = sign_receipt(m, b[0], 4, head_time(chain))
    o, w = m.order(buyers[0]), m.bid(providers[1], price=P_DEAR)
    # Batch 0 of round 4 lands with the witness lease, but the round is not final yet.
    tx = m.settle([o], [w], [(0, 0, 2)], {H100: P_DEAR}, round_id=4, final=False)
    s = Scene(m, 4, providers[0], b, receipt, o, w, lease_start(m, tx, o, w))
    with reverts(court.RoundNotFinal, round=4):
        s.challenge()
    with reverts(court.RoundNotFinal, round=5):
        s.challenge(round_id=5)
    # The final batch closes the round, and the lease from batch 0 is a witness.
    m.settle(
        [m.order(buyers[1])], [m.bid(providers[2], price=P_DEAR)], [(0, 0, 1)], {H100: P_DEAR}, round_id=4, batch=1
    )
    s.challenge()


def test_round_final_after_its_span(funded, chain, settlement, court, buyers, providers, params):
    """A matcher cannot dodge a challenge by never sending the final batch."""
    m = funded
    b = m.bid(providers[0], price=P_CHEAP)
    receipt = sign_receipt(m, b[0], 1, head_time(chain))
    o, w = m.order(buyers[0]), m.bid(providers[1], price=P_DEAR)
    tx = m.settle([o], [w], [(0, 0, 2)], {H100: P_DEAR}, round_id=1, final=False)
    s = Scene(m, 1, providers[0], b, receipt, o, w, lease_start(m, tx, o, w))
    chain.pending_timestamp = s.start + params.max_round_span
    with reverts(court.RoundNotFinal, round=1):
        s.challenge()
    chain.pending_timestamp = s.start + params.max_round_span + 1
    s.challenge()
    assert settlement.matchers(m.matcher).bond == params.min_matcher_bond // 2


def test_forged_receipt(court, scene, settlement, matcher, outsider):
    r, _ = scene.receipt
    forged = (r, r.sign(outsider.private_key, scene.m.domain))
    with reverts(court.SignerMismatch, expected=matcher, recovered=outsider):
        scene.challenge(receipt=forged)
    # A receipt whose fields were changed after signing recovers to nobody in particular.
    altered = (r.model_copy(update={"issued_at": r.issued_at - 100}), scene.receipt[1])
    with reverts(court.SignerMismatch, expected=matcher):
        scene.challenge(receipt=altered)
    with reverts(court.InvalidSignature):
        scene.challenge(receipt=(r, scene.receipt[1][:64]))


def test_receipt_from_another_matcher(
    funded, chain, accounts, settlement, court, matcher, buyers, providers, outsider, params
):
    m = funded
    bond(m, outsider, params.min_matcher_bond)
    assert settlement.isBondedMatcher(outsider)
    # Round 1 is settled by the devnet matcher; the provider holds a receipt naming it but signed
    # by the other matcher's key.
    s = pass_over(m, chain, providers[0], providers[1], buyers[0], receipt_key=outsider.private_key)
    with reverts(court.SignerMismatch, expected=matcher, recovered=outsider):
        s.challenge()
    # A genuine receipt of the other matcher does not cover a bid naming the devnet matcher.
    theirs = sign_receipt(m, s.bid[0], 1, s.receipt[0].issued_at, matcher=outsider)
    with reverts(court.ReceiptMatcherMismatch, named=matcher, matcher=outsider):
        s.challenge(receipt=theirs)

    # Round 1 of the other matcher: only its receipts bind it, and only it is slashed.
    buyer, provider, rival = accounts_of(m, outsider, accounts, n=3)
    s2 = pass_over(m, chain, provider, rival, buyer, sender=outsider)
    assert s2.round_id == 1 and settlement.lastRound(outsider) == 1
    forged = sign_receipt(m, s2.bid[0], 1, s2.receipt[0].issued_at, key=matcher.private_key, matcher=outsider)
    with reverts(court.SignerMismatch, expected=outsider, recovered=matcher):
        s2.challenge(receipt=forged)
    s2.challenge()
    assert settlement.matchers(outsider).bond == params.min_matcher_bond // 2
    assert settlement.matchers(matcher).bond == params.min_matcher_bond


def test_receipt_signer_is_fixed_while_bonded(market, ubt, settlement, outsider, matcher, params):
    m = market
    m.give_ubt(outsider, 2 * params.min_matcher_bond)
    ubt.approve(settlement, 2 * params.min_matcher_bond, sender=outsider)
    with reverts(settlement.InvalidParameter, name="receiptSigner"):
        settlement.bondMatcher(params.min_matcher_bond, "0x" + "00" * 20, sender=outsider)
    tx = settlement.bondMatcher(params.min_matcher_bond, matcher, sender=outsider)
    assert tx.decode_logs(settlement.MatcherBonded)[0].receiptSigner == matcher.address
    assert settlement.matchers(outsider).receiptSigner == matcher.address
    with reverts(settlement.ReceiptSignerFixed, signer=matcher):
        settlement.bondMatcher(1, outsider, sender=outsider)
    settlement.bondMatcher(1, matcher, sender=outsider)
    assert settlement.matchers(outsider).bond == params.min_matcher_bond + 1


def test_witness_before_the_receipt(funded, chain, settlement, court, buyers, providers):
    m = funded
    s = pass_over(m, chain, providers[0], providers[1], buyers[0], round_id=1)
    # A receipt for a later round does not prove round 1.
    later = sign_receipt(m, s.bid[0], 2, s.receipt[0].issued_at)
    with reverts(court.WitnessBeforeReceipt, receiptRound=2, round=1):
        s.challenge(receipt=later)
    s.challenge()


def test_receipt_for_another_bid(court, scene, chain, settlement, providers):
    m = scene.m
    other = m.bid(providers[0], price=P_CHEAP)
    # A genuine receipt for the provider's other bid does not cover this one...
    with reverts(court.ReceiptBidMismatch, receiptBidHash=digest(other[0], m), bidDigest=scene.bid_digest):
        scene.challenge(receipt=sign_receipt(m, other[0], scene.round_id, scene.receipt[0].issued_at))
    # ...nor does the receipt of this bid cover an altered copy of it (even one signed anew).
    cheaper = scene.bid[0].model_copy(update={"price": P_CHEAP - 1})
    with reverts(court.ReceiptBidMismatch, receiptBidHash=scene.bid_digest, bidDigest=digest(cheaper, m)):
        scene.challenge(bid=(cheaper, cheaper.sign(providers[0].private_key, m.domain)))


def test_bid_signature_by_someone_else(court, scene, settlement, providers, outsider):
    b = scene.bid[0]
    with reverts(court.SignerMismatch, expected=providers[0], recovered=outsider):
        scene.challenge(bid=(b, b.sign(outsider.private_key, scene.m.domain)))


def test_witness_from_another_market(court, funded, chain, settlement, buyers, providers):
    m = funded
    b = m.bid(providers[0], price=P_CHEAP)  # H100
    receipt = sign_receipt(m, b[0], 1, head_time(chain))
    o, w = m.order(buyers[0], market=A100), m.bid(providers[1], market=A100, price=P_DEAR)
    tx = m.settle([o], [w], [(0, 0, 2)], {A100: P_DEAR}, round_id=1)
    s = Scene(m, 1, providers[0], b, receipt, o, w, lease_start(m, tx, o, w))
    with reverts(court.WitnessMarketMismatch, witnessMarket=bytes.fromhex(A100[2:]), market=bytes.fromhex(H100[2:])):
        s.challenge()


def test_witness_from_another_round(court, funded, chain, settlement, buyers, providers):
    m = funded
    # Round 1: the dear bid W wins. Round 2: B is receipted and W's lease is offered as witness.
    o, w = m.order(buyers[0]), m.bid(providers[1], price=P_DEAR)
    m.settle([o], [w], [(0, 0, 2)], {H100: P_DEAR}, round_id=1)
    b = m.bid(providers[0], price=P_CHEAP)
    receipt = sign_receipt(m, b[0], 2, head_time(chain))
    m.settle([m.order(buyers[1])], [m.bid(providers[2], price=P_CHEAP)], [(0, 0, 1)], {H100: P_CHEAP}, round_id=2)
    s = Scene(m, 2, providers[0], b, receipt, o, w, 0)
    lease_in_2 = settlement.leaseIdOf(m.matcher, 2, digest(o[0], m), digest(w[0], m))
    with reverts(court.WitnessNotInRound, leaseId=lease_in_2):
        s.challenge()
    # A made-up order digest names no lease either.
    with reverts(court.WitnessNotInRound):
        s.challenge(order_digest=b"\x11" * 32)


def test_witness_must_be_the_leases_own_bid(court, scene, settlement, providers):
    # The challenger cannot dress up the witness: a copy of W with another price hashes to another
    # lease id, which the round does not have.
    dearer = scene.witness[0].model_copy(update={"price": P_DEAR + 1})
    with reverts(court.WitnessNotInRound):
        scene.challenge(witness=(dearer, b""))


def test_witness_longer_than_max_duration(court, funded, chain, settlement, buyers, providers):
    m = funded
    short = pass_over(m, chain, providers[0], providers[1], buyers[0], round_id=1,
                      bid={"max_duration": 2 * HOUR - 1}, order={"duration": 2 * HOUR})
    with reverts(court.WitnessDurationTooLong, duration=2 * HOUR, maxDuration=2 * HOUR - 1):
        short.challenge()
    # Exactly the bid's maxDuration is a duration the bid accepts.
    exact = pass_over(m, chain, providers[2], providers[3], buyers[1],
                      bid={"max_duration": 2 * HOUR}, order={"duration": 2 * HOUR})
    exact.challenge()


def test_cancelled_bid(scene, settlement, court, providers):
    nonce = scene.bid[0].nonce
    # An announced cancellation is enough: the provider cannot keep a bid the matcher must drop.
    settlement.requestCancel([nonce], sender=providers[0])
    assert not settlement.isNonceUsed(providers[0], nonce)
    with reverts(court.BidCancelled, provider=providers[0], nonce=nonce):
        scene.challenge()


def test_bid_cancelled_before_the_round(funded, chain, settlement, court, buyers, providers):
    m = funded
    b = m.bid(providers[0], price=P_CHEAP)
    settlement.requestCancel([b[0].nonce], sender=providers[0])
    receipt = sign_receipt(m, b[0], 1, head_time(chain))
    o, w = m.order(buyers[0]), m.bid(providers[1], price=P_DEAR)
    tx = m.settle([o], [w], [(0, 0, 2)], {H100: P_DEAR}, round_id=1)
    s = Scene(m, 1, providers[0], b, receipt, o, w, lease_start(m, tx, o, w))
    with reverts(court.BidCancelled, provider=providers[0], nonce=b[0].nonce):
        s.challenge()


def test_bid_nonce_taken_by_another_message(funded, chain, settlement, court, buyers, providers):
    """The provider signed a second bid with B's nonce and it filled: B could not fill any more."""
    m = funded
    b = m.bid(providers[0], price=P_CHEAP, nonce=4_242)
    receipt = sign_receipt(m, b[0], 1, head_time(chain))
    twin = m.bid(providers[0], price=P_CHEAP, capacity=1, nonce=4_242)
    m.settle([m.order(buyers[1], units=1)], [twin], [(0, 0, 1)], {H100: P_CHEAP}, round_id=1)
    o, w = m.order(buyers[0]), m.bid(providers[1], price=P_DEAR)
    tx = m.settle([o], [w], [(0, 0, 2)], {H100: P_DEAR}, round_id=2)
    s = Scene(m, 2, providers[0], b, receipt, o, w, lease_start(m, tx, o, w))
    assert tuple(settlement.nonceState(providers[0], 4_242)) == (True, True)
    with reverts(court.BidNonceTaken, provider=providers[0], nonce=4_242):
        s.challenge()


def test_bid_expired_before_the_witness(funded, chain, settlement, court, buyers, providers):
    m = funded
    t = head_time(chain) + 100
    expired = pass_over(m, chain, providers[0], providers[1], buyers[0], bid={"deadline": t - 1}, settle_at=t)
    assert expired.start == t
    with reverts(court.BidExpiredBeforeWitness, deadline=t - 1, witnessStart=t):
        expired.challenge()
    # Nor does a bid that expired within the notice period after the witness landed: the matcher
    # may leave out a bid that could expire before its batch lands.
    notice = settlement.noticePeriod()
    t1 = t + 100
    short = pass_over(m, chain, providers[0], providers[1], buyers[0], bid={"deadline": t1 + notice - 1}, settle_at=t1)
    with reverts(court.BidExpiredBeforeWitness, deadline=t1 + notice - 1, witnessStart=t1):
        short.challenge()
    # A bid valid for the notice period after the witness lease landed could have been filled in it.
    t2 = t1 + 100
    live = pass_over(m, chain, providers[2], providers[3], buyers[1], bid={"deadline": t2 + notice}, settle_at=t2)
    live.challenge()


def test_bid_fully_filled_after_the_round(court, scene, chain, settlement, buyers, providers):
    m = scene.m
    # B fills completely in round 2, after round 1: that does not excuse round 1, only round 2 itself.
    # Round 2: B fills completely, and a dearer bid serves another order.
    o2, w2 = m.order(buyers[1], units=2), m.bid(providers[2], price=P_DEAR)
    o3 = m.order(buyers[2], units=3)
    m.settle([o3, o2], [scene.bid, w2], [(0, 0, 3), (1, 1, 2)], {H100: P_DEAR})
    # Used up by its first fill: no fill record, the nonce claimed and void; B's round-2 lease
    # proves when (a message with B's nonce that is not B could not have a lease of B).
    assert tuple(settlement.fills(scene.bid_digest)) == (0, 0)
    assert tuple(settlement.nonceState(providers[0], scene.bid[0].nonce)) == (True, True)
    proof = (2, digest(o3[0], m))
    with reverts(court.BidNonceTaken, provider=providers[0].address, nonce=scene.bid[0].nonce):
        scene.verify()
    # Filled up in a later round: B still had its units when round 1 ended, so round 1 stays provable.
    scene.verify(fill=proof)
    # Filled up in the witness round itself: no unit to spare.
    with reverts(court.BidFullyFilled, bidDigest=scene.bid_digest):
        scene.challenge(round_id=2, order=o2, witness=w2, fill=proof)
    scene.challenge(fill=proof)


def test_stake_decreased_after_the_receipt(court, funded, chain, settlement, buyers, providers):
    m = funded
    issued = head_time(chain) + 50
    chain.mine(timestamp=issued)
    s = pass_over(m, chain, providers[0], providers[1], buyers[0], issued_at=issued)
    # The provider asks to unstake one unit's worth after the receipt.
    chain.pending_timestamp = s.start + 10
    settlement.requestUnstake(m.params.stake_per_unit, sender=providers[0])
    with reverts(court.StakeDecreasedAfterReceipt, decreasedAt=s.start + 10, issuedAt=issued):
        s.challenge()


def test_stake_decrease_in_the_receipts_second(court, funded, chain, settlement, buyers, providers):
    m = funded
    t = head_time(chain) + 50
    chain.pending_timestamp = t
    settlement.requestUnstake(m.params.stake_per_unit, sender=providers[0])
    # The matcher read the stake in this second: a decrease then counts as after the receipt.
    s = pass_over(m, chain, providers[0], providers[1], buyers[0], issued_at=t)
    with reverts(court.StakeDecreasedAfterReceipt, decreasedAt=t, issuedAt=t):
        s.challenge()


def test_stake_decrease_before_the_receipt_is_fine(funded, chain, settlement, buyers, providers):
    m = funded
    t = head_time(chain) + 50
    chain.pending_timestamp = t
    settlement.requestUnstake(m.params.stake_per_unit, sender=providers[0])
    s = pass_over(m, chain, providers[0], providers[1], buyers[0], issued_at=t + 1)
    s.challenge()
    assert settlement.matchers(m.matcher).bond == m.params.min_matcher_bond // 2


def test_receipt_dated_zero_proves_nothing(court, scene, settlement):
    """A receipt claiming to predate every stake change is refused for any provider, even one
    whose stake never moved: providers must check `issuedAt` when they get a receipt."""
    assert settlement.providers(scene.provider).stakeDecreasedAt == 0
    r = scene.receipt[0].model_copy(update={"issued_at": 0})
    with reverts(court.StakeDecreasedAfterReceipt, decreasedAt=0, issuedAt=0):
        scene.challenge(receipt=(r, r.sign(scene.m.matcher.private_key, scene.m.domain)))


def test_stake_slashed_after_the_receipt(court, funded, chain, settlement, buyers, providers, outsider, params):
    m = funded
    # Provider 0 runs a lease from round 1 and misses its heartbeats.
    tx = m.settle([m.order(buyers[2], units=1)], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=1)
    [lease_id] = m.lease_ids(tx)
    s = pass_over(m, chain, providers[0], providers[1], buyers[0], round_id=2)
    slash_at = max(settlement.faultReportableAt(lease_id), head_time(chain) + 1)
    assert slash_at < s.closes
    chain.pending_timestamp = slash_at
    settlement.reportFault(lease_id, sender=outsider)
    assert settlement.providers(providers[0]).stakeDecreasedAt == slash_at
    with reverts(court.StakeDecreasedAfterReceipt, decreasedAt=slash_at, issuedAt=s.receipt[0].issued_at):
        s.challenge()


def test_second_challenge_of_the_same_round_and_bid(court, funded, chain, settlement, buyers, providers, params):
    m = funded
    s = pass_over(m, chain, providers[0], providers[1], buyers[0])
    s.challenge()
    with reverts(court.AlreadyChallenged, round=1, bidDigest=s.bid_digest):
        s.challenge()
    with reverts(court.AlreadyChallenged, round=1, bidDigest=s.bid_digest):
        s.verify()
    assert settlement.matchers(m.matcher).bond == params.min_matcher_bond // 2


def test_second_challenge_with_another_witness(funded, chain, settlement, buyers, providers, params):
    m = funded
    b = m.bid(providers[0], price=P_CHEAP)
    receipt = sign_receipt(m, b[0], 1, head_time(chain))
    o1, w1 = m.order(buyers[0], units=1), m.bid(providers[1], price=P_DEAR)
    o2, w2 = m.order(buyers[1], units=1), m.bid(providers[2], price=P_DEAR)
    tx = m.settle([o1, o2], [w1, w2], [(0, 0, 1), (1, 1, 1)], {H100: P_DEAR}, round_id=1)
    s = Scene(m, 1, providers[0], b, receipt, o1, w1, lease_start(m, tx, o1, w1))
    s.challenge()
    with reverts(settlement.AlreadyChallenged, round=1, bidDigest=s.bid_digest):
        s.challenge(order=o2, witness=w2)
    assert settlement.matchers(m.matcher).bond == params.min_matcher_bond // 2


def test_only_the_bids_provider_collects(court, scene, ubt, settlement, outsider, providers, params):
    # Anyone may run the check as a view...
    assert scene.verify()[0] == scene.m.matcher.address
    # ...but only the bid's provider may challenge with it.
    with reverts(court.NotBidProvider, caller=outsider, provider=providers[0]):
        scene.challenge(sender=outsider)
    with reverts(court.NotBidProvider, caller=providers[1], provider=providers[0]):
        scene.challenge(sender=providers[1])
    assert settlement.matchers(scene.m.matcher).bond == params.min_matcher_bond


# ----------------------------------------------------------------------------------------------
# matcher bonds
# ----------------------------------------------------------------------------------------------


def test_bond_matcher(market, ubt, settlement, outsider, params):
    m = market
    with reverts(settlement.ZeroAmount):
        settlement.bondMatcher(0, outsider, sender=outsider)
    m.give_ubt(outsider, params.min_matcher_bond)
    ubt.approve(settlement, params.min_matcher_bond, sender=outsider)
    held = ubt.balanceOf(settlement)
    tx = settlement.bondMatcher(params.min_matcher_bond - 1, outsider, sender=outsider)
    [event] = tx.decode_logs(settlement.MatcherBonded)
    assert (event.matcher, event.amount, event.bond) == (
        outsider.address,
        params.min_matcher_bond - 1,
        params.min_matcher_bond - 1,
    )
    assert not settlement.isBondedMatcher(outsider)
    settlement.bondMatcher(1, outsider, sender=outsider)
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
        settlement.bondMatcher(UBT, matcher, sender=matcher)

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
    assert params.matcher_exit_delay > params.max_round_span + params.challenge_window
    s = pass_over(m, chain, providers[0], providers[1], buyers[0])
    assert settlement.matchers(matcher).slashableUntil == s.closes
    # The matcher asks to leave right after settling the round.
    chain.pending_timestamp = s.start + 1
    settlement.requestMatcherExit(sender=matcher)
    exit_at = s.start + 1 + params.matcher_exit_delay
    assert exit_at > s.closes
    # Its bond cannot leave while the round can still be challenged...
    chain.pending_timestamp = s.closes
    with reverts(settlement.ExitDelayNotOver, exitAt=exit_at):
        settlement.withdrawMatcherBond(sender=matcher)
    # ...and in the window's last second the challenge still slashes it.
    chain.pending_timestamp = s.closes
    s.challenge()
    chain.pending_timestamp = exit_at
    balance = ubt.balanceOf(matcher)
    settlement.withdrawMatcherBond(sender=matcher)
    assert ubt.balanceOf(matcher) == balance + params.min_matcher_bond // 2


def test_exit_waits_for_the_last_leases_window(
    funded, chain, timelock, deployer, ubt, settlement, matcher, buyers, providers, params
):
    """With a shorter exit delay, the bond still stays until the last lease's window has closed."""
    m = funded
    p = params.core_params()
    window = params.challenge_window
    short = p[:7] + (window + params.max_round_span + 1,) + p[8:]
    through_timelock(timelock, chain, settlement, "setParams", short, sender=deployer, delay=params.admin_delay)
    s = pass_over(m, chain, providers[0], providers[1], buyers[0])
    chain.pending_timestamp = s.closes - 10
    settlement.requestMatcherExit(sender=matcher)
    exit_at = s.closes - 10 + window + params.max_round_span + 1
    assert settlement.matchers(matcher).exitAt == exit_at
    # Leases opened now would be challengeable until later still: slashableUntil follows settle.
    assert settlement.matchers(matcher).slashableUntil == s.closes
    chain.pending_timestamp = exit_at - 1
    with reverts(settlement.ExitDelayNotOver, exitAt=exit_at):
        settlement.withdrawMatcherBond(sender=matcher)
    chain.pending_timestamp = exit_at
    settlement.withdrawMatcherBond(sender=matcher)
    assert settlement.matchers(matcher).bond == 0


def test_a_challenge_after_the_exit_delay_finds_the_window_closed(
    funded, chain, settlement, court, matcher, buyers, providers, params
):
    m = funded
    s = pass_over(m, chain, providers[0], providers[1], buyers[0])
    chain.pending_timestamp = s.start + 1
    settlement.requestMatcherExit(sender=matcher)
    chain.pending_timestamp = s.start + 1 + params.matcher_exit_delay
    chain.mine()
    with reverts(court.ChallengeWindowClosed, round=s.round_id, closedAt=s.closes):
        s.verify()
    settlement.withdrawMatcherBond(sender=matcher)
    # Once the bond is gone, so is the matcher's receipt signer: no receipt verifies any more.
    with reverts(court.SignerMismatch, expected="0x" + "00" * 20, recovered=matcher):
        s.challenge()


def test_exit_delay_must_outlast_the_challenge_window(settlement, timelock, chain, deployer, params):
    p = params.core_params()
    window = p[6]
    span = params.max_round_span
    assert p[7] == params.matcher_exit_delay > window + span

    def set_params(new):
        return through_timelock(
            timelock, chain, settlement, "setParams", new, sender=deployer, delay=params.admin_delay
        )

    with reverts(settlement.InvalidParameter, name="matcherExitDelay"):
        set_params(p[:7] + (window + span,) + p[8:])
    with reverts(settlement.InvalidParameter, name="challengeWindow"):
        set_params(p[:6] + (0,) + p[7:])
    set_params(p[:7] + (window + span + 1,) + p[8:])
    assert settlement.params().matcherExitDelay == window + span + 1


def test_provider_leaving_the_matcher_voids_the_receipt(
    funded, chain, settlement, court, matcher, buyers, providers, outsider, params
):
    """An honest matcher must not be slashable for a bid it could not count on.

    After the receipt, the provider asks to move to another matcher. An honest matcher takes no
    more of its bids while the change is pending (after it, it could not settle them at all), so
    passing B over is no proof.
    """
    m = funded
    bond(m, outsider, params.min_matcher_bond)
    s = pass_over(m, chain, providers[0], providers[1], buyers[0], issued_at=head_time(chain))
    s.verify()  # provable while the provider stays
    settlement.bindMatcher(outsider, sender=providers[0])
    # Still bound to the matcher during the notice, but it asked to leave after the receipt.
    assert settlement.boundMatcherOf(providers[0]) == matcher.address
    with reverts(court.ProviderLeftMatcher, provider=providers[0], matcher=matcher):
        s.challenge()
    chain.pending_timestamp = chain.pending_timestamp + params.notice_period
    chain.mine()
    assert settlement.boundMatcherOf(providers[0]) == outsider.address
    with reverts(court.ProviderLeftMatcher, provider=providers[0], matcher=matcher):
        s.challenge()
    assert settlement.matchers(matcher).bond == params.min_matcher_bond


def test_provider_change_before_the_receipt_does_not_excuse(
    funded, chain, settlement, court, matcher, buyers, providers, outsider, params
):
    """A binding change asked for (and withdrawn) before the receipt was issued is old news."""
    m = funded
    settlement.bindMatcher(outsider, sender=providers[0])
    settlement.bindMatcher(matcher, sender=providers[0])  # changes its mind: stays with the matcher
    chain.pending_timestamp = chain.pending_timestamp + params.notice_period
    chain.mine()
    assert settlement.boundMatcherOf(providers[0]) == matcher.address
    requested = settlement.bindingOf(providers[0]).requestedAt
    s = pass_over(m, chain, providers[0], providers[1], buyers[0], issued_at=head_time(chain))
    assert requested < s.receipt[0].issued_at
    s.challenge()
    assert settlement.matchers(matcher).bond == params.min_matcher_bond // 2
