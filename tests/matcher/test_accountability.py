"""Matcher accountability through the real matcher: no receipted bid can prove an honest round wrong.

Each hypothesis example posts random signed bids and orders (one or two markets, random prices,
capacities, durations, max durations) to a fresh matcher process over HTTP, lets the chain change
under it (an unstake request, a cancel request for a bid, a buyer announcing a withdrawal),
closes the round, and then tries every (receipted bid, lease of the round) pair as a challenge in
the `MatcherCourt`: `verifyChallenge`, the court's own check, must revert for each (the spare-unit
proof, and the swap proof for a bid with its own lease in the round), and for a reason the
allocation makes true (a fully filled bid, a cheaper witness, another market, a too-long lease, a
stake decrease, a cancel request, a swap that is not shorter), never for a malformed proof (bad
receipt, wrong round, unknown lease), which would mean the harness proves nothing.
`test_checker_finds_a_passed_over_bid` shows the same checker catching a round that
passes over a receipted bid.

The last tests hold the matcher to its promises where a single random round does not reach:
right after a round locks a provider's stake, under concurrent bids from one provider, and when
an order is lost between clearing and settlement.

Each example runs on its own chain snapshot and its own matcher database, so round ids restart
at 1 and examples do not see each other's messages.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from ape.exceptions import ContractLogicError
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from underbid.protocol.eip712 import Bid, Receipt, recover_signer

from ..conftest import A100, H100, HOUR, UBC
from ..reverts import error_name
from .conftest import MatcherProcess, on_both_stores, order_body

#: Reasons an honest round gives for refusing a challenge.
SUBSTANTIVE = {
    "BidFullyFilled",
    "WitnessNotPricier",
    "WitnessMarketMismatch",
    "WitnessDurationTooLong",
    "StakeDecreasedAfterReceipt",
    "BidCancelled",
    "BidExpiredBeforeWitness",
    "SwapNotShorter",
}
EXAMPLES = 8

PROVIDER_STAKE_UNITS = (2, 3, 5, 8, 12)
BUYER_CREDITS = (15 * UBC, 40 * UBC, 120 * UBC, 400 * UBC)


# ----------------------------------------------------------------------------------------------
# the checker
# ----------------------------------------------------------------------------------------------


def outcome(contract, call) -> str:
    """"SUCCEEDS" if `call()` returns, else the name of the custom error it reverts with (decoded
    by selector when ape cannot name it)."""
    try:
        call()
    except ContractLogicError as exc:
        return error_name(contract, exc)
    return "SUCCEEDS"


def stored_bid(http, digest: str) -> tuple[Bid, bytes]:
    view = http.get(f"/bids/{digest}")
    assert view.status_code == 200, view.text
    body = view.json()
    return Bid.model_validate(body["message"]), bytes.fromhex(body["signature"][2:])


def round_leases(settlement, round_id: int, from_block: int, to_block: int) -> list:
    return [log for log in settlement.LeaseOpened.range(from_block, to_block + 1) if log.round == round_id]


def challenge_args(http, round_id: int, receipt: dict, lease, own_order: bytes = bytes(32),
                   fill_lease: tuple[int, bytes] = (0, bytes(32))) -> tuple:
    """The arguments of `MatcherCourt.challenge` for a receipted bid and a witness lease; `fill_lease`
    (round, order digest) is a lease of the bid itself, which the court needs when the bid was used
    up by its first fill."""
    bid, bid_sig = stored_bid(http, receipt["bidHash"])
    r = Receipt(matcher=receipt["matcher"], bid_hash=receipt["bidHash"], round=receipt["round"],
                issued_at=receipt["issuedAt"])
    witness = stored_bid(http, "0x" + bytes(lease.bidDigest).hex())[0]
    return (r.as_call_tuple(), bytes.fromhex(receipt["signature"][2:]), bid.as_call_tuple(), bid_sig,
            (round_id, bytes(lease.orderDigest), witness.as_call_tuple()), own_order, fill_lease)


def challenge_outcomes(http, court, round_id: int, receipts: dict[str, dict], leases) -> dict[tuple[str, str], str]:
    """The court's verifyChallenge for every (receipted bid, lease): the error name, or "SUCCEEDS".

    The spare-unit proof for every pair; for a bid with its own lease in the round, the swap proof
    too (keyed with a "swap:" prefix on the lease id)."""
    outcomes = {}
    for bid_digest, receipt in receipts.items():
        own = [lease for lease in leases if "0x" + bytes(lease.bidDigest).hex() == bid_digest]
        # As an honest challenger would: name a lease of the bid, so a bid used up in this round is
        # judged by that round (`BidFullyFilled`) rather than refused for want of proof.
        fill = (round_id, bytes(own[0].orderDigest)) if own else (0, bytes(32))
        for lease in leases:
            lease_id = "0x" + bytes(lease.leaseId).hex()
            args = challenge_args(http, round_id, receipt, lease, fill_lease=fill)
            outcomes[(bid_digest, lease_id)] = outcome(court, lambda args=args: court.verifyChallenge(*args))
            for mine in own:
                if mine.leaseId == lease.leaseId:
                    continue
                args = challenge_args(http, round_id, receipt, lease, bytes(mine.orderDigest), fill)
                outcomes[(bid_digest, f"swap:{lease_id}:{bytes(mine.leaseId).hex()}")] = outcome(
                    court, lambda args=args: court.verifyChallenge(*args)
                )
    return outcomes


def assert_unchallengeable(outcomes: dict[tuple[str, str], str], round_id: int) -> None:
    succeeding = [
        f"bid {bid} with witness lease {lease}" for (bid, lease), why in outcomes.items() if why == "SUCCEEDS"
    ]
    assert not succeeding, f"a challenge against round {round_id} would slash the matcher: {succeeding}"


# ----------------------------------------------------------------------------------------------
# random rounds
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BidSpec:
    provider: int
    market: int
    capacity: int
    price: int
    max_duration: int


@dataclass(frozen=True)
class OrderSpec:
    buyer: int
    market: int
    units: int
    duration: int
    max_price: int


@dataclass(frozen=True)
class RoundSpec:
    markets: int
    bids: tuple[BidSpec, ...]
    orders: tuple[OrderSpec, ...]
    unstake: int | None  # provider who unstakes one unit after its receipts
    cancel: int | None  # index of a bid whose nonce is cancelled after its receipt
    withdraw: int | None  # buyer who withdraws half its free escrow before the round closes


HALF = UBC // 2


@st.composite
def round_specs(draw) -> RoundSpec:
    markets = draw(st.integers(1, 2))
    bids = draw(st.lists(st.builds(
        BidSpec,
        provider=st.integers(0, len(PROVIDER_STAKE_UNITS) - 1),
        market=st.integers(0, markets - 1),
        capacity=st.integers(1, 4),
        price=st.integers(2, 6).map(lambda k: k * HALF),
        max_duration=st.sampled_from((HOUR, 2 * HOUR, 4 * HOUR)),
    ), min_size=1, max_size=7))
    orders = draw(st.lists(st.builds(
        OrderSpec,
        buyer=st.integers(0, len(BUYER_CREDITS) - 1),
        market=st.integers(0, markets - 1),
        units=st.integers(1, 4),
        duration=st.sampled_from((HOUR, 2 * HOUR, 3 * HOUR)),
        max_price=st.integers(2, 8).map(lambda k: k * HALF),
    ), min_size=1, max_size=5))
    # Each disturbance in about a third of the rounds, so most refusals rest on the allocation.
    unstake = draw(st.none() | st.none() | st.integers(0, len(PROVIDER_STAKE_UNITS) - 1))
    cancel = draw(st.none() | st.none() | st.integers(0, len(bids) - 1))
    withdraw = draw(st.none() | st.none() | st.integers(0, len(BUYER_CREDITS) - 1))
    return RoundSpec(markets, tuple(bids), tuple(orders), unstake, cancel, withdraw)


#: A round built to need the subtle rules: a cheap short bid left partly unused while a dear long
#: bid serves a long order, a cheap bid dropped by an unstake request while a dearer one serves
#: its order, and a second market.
HAND_PICKED = RoundSpec(
    markets=2,
    bids=(
        BidSpec(3, 0, 4, 2 * HALF, HOUR),  # cheapest, but too short for the 3 h order
        BidSpec(2, 0, 2, 5 * HALF, 4 * HOUR),  # dear, the only one for the 3 h order
        BidSpec(1, 0, 2, 3 * HALF, 2 * HOUR),  # unused: too short, and dearer than the first
        BidSpec(4, 1, 3, 2 * HALF, 4 * HOUR),
        BidSpec(0, 1, 2, 4 * HALF, 4 * HOUR),  # its provider unstakes after the receipt
        BidSpec(3, 1, 2, 5 * HALF, 4 * HOUR),  # so this dearer bid wins instead, a pricier witness
        BidSpec(2, 1, 1, 6 * HALF, 4 * HOUR),  # unused: it sets market 1's price
    ),
    orders=(
        OrderSpec(3, 0, 2, 3 * HOUR, 8 * HALF),
        OrderSpec(2, 0, 1, HOUR, 6 * HALF),
        OrderSpec(1, 1, 5, 2 * HOUR, 7 * HALF),  # needs both units of the unstaking provider's bid
    ),
    unstake=0,
    cancel=None,
    withdraw=None,
)


def _post(http, path: str, message, sig: bytes):
    return http.post(path, json=order_body(message, sig))


def play_round(
    spec: RoundSpec, m, chain, settlement, court, matcher_address, buyers, providers, book_path, workdir, index
):
    markets = (H100, A100)[: spec.markets]
    process = MatcherProcess(
        chain.provider.uri, book_path, workdir / f"matcher-{index}.db", workdir / f"matcher-{index}.log"
    )
    process.start()
    try:
        with process.client() as http:
            receipts: dict[str, dict] = {}
            posted_bids = []
            for b in spec.bids:
                bid, sig = m.bid(providers[b.provider], market=markets[b.market], capacity=b.capacity, price=b.price,
                                 max_duration=b.max_duration, deadline=m.now() + 4 * HOUR)
                r = _post(http, "/bids", bid, sig)
                if r.status_code == 201:
                    receipt = r.json()["receipt"]
                    digest = "0x" + bid.digest(m.domain).hex()
                    # The receipt is the matcher's, for this bid, in the open round.
                    assert receipt["bidHash"] == digest and receipt["round"] == 1
                    assert receipt["matcher"] == matcher_address
                    signed = Receipt(matcher=matcher_address, bid_hash=digest, round=1, issued_at=receipt["issuedAt"])
                    signature = bytes.fromhex(receipt["signature"][2:])
                    assert recover_signer(signed.digest(m.domain), signature) == matcher_address
                    assert receipt["issuedAt"] <= chain.blocks.head.timestamp
                    receipts[digest] = receipt
                    posted_bids.append(bid)
                else:
                    # The only refusal a well-formed bid meets here is the stake reservation rule.
                    assert r.status_code == 400 and r.json()["detail"][0]["field"] == "capacity", r.text
                    posted_bids.append(None)
            for o in spec.orders:
                order, sig = m.order(buyers[o.buyer], market=markets[o.market], units=o.units, duration=o.duration,
                                     max_price=o.max_price, deadline=m.now() + 4 * HOUR)
                r = _post(http, "/orders", order, sig)
                refused_for_escrow = r.status_code == 400 and r.json()["detail"][0]["field"] == "buyer"
                assert r.status_code == 201 or refused_for_escrow, r.text

            # The chain moves under the matcher between intake and clearing.
            if spec.unstake is not None:
                p = providers[spec.unstake]
                if settlement.availableStake(p) >= m.params.stake_per_unit:
                    settlement.requestUnstake(m.params.stake_per_unit, sender=p)
            if spec.cancel is not None and posted_bids[spec.cancel] is not None:
                bid = posted_bids[spec.cancel]
                settlement.requestCancel([bid.nonce], sender=providers[spec.bids[spec.cancel].provider])
            if spec.withdraw is not None:
                buyer = buyers[spec.withdraw]
                free = settlement.escrowOf(buyer).free
                if free // 2:
                    settlement.requestWithdrawal(free // 2, sender=buyer)

            first_block = chain.blocks.height + 1
            r = process.close_round()
            assert r.status_code == 200, r.text
            report = r.json()
            assert report["round_id"] == 1
            if report["state"] == "open":  # nothing to match: no transaction, the round stays open
                assert settlement.rounds(matcher_address, 1).openedAt == 0
                return None
            assert report["state"] == "confirmed", report
            assert settlement.rounds(matcher_address, 1).finalizedAt > 0 and settlement.isRoundFinal(matcher_address, 1)

            leases = round_leases(settlement, 1, first_block, chain.blocks.height)
            assert len(leases) == report["matches"] > 0
            assert all(lease.matcher == matcher_address for lease in leases)
            outcomes = challenge_outcomes(http, court, 1, receipts, leases)
            return outcomes
    finally:
        process.stop()


@pytest.fixture
def players(accounts, market):
    buyers, providers = list(accounts[10:14]), list(accounts[20:25])
    for buyer, credits in zip(buyers, BUYER_CREDITS, strict=True):
        market.fund_buyer(buyer, credits)
    for provider, units in zip(providers, PROVIDER_STAKE_UNITS, strict=True):
        market.stake_provider(provider, units)
    return buyers, providers


@pytest.mark.filterwarnings("ignore")
def test_no_receipted_bid_can_challenge_an_honest_round(
    market, chain, settlement, court, matcher, players, book_path, tmp_path
):
    buyers, providers = players
    snapshot = [chain.snapshot()]
    counter = iter(range(10_000))
    seen_outcomes: set[str] = set()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
    )
    @given(spec=round_specs())
    @example(spec=HAND_PICKED)
    def check(spec: RoundSpec) -> None:
        try:
            outcomes = play_round(spec, market, chain, settlement, court, matcher.address, buyers, providers, book_path,
                                  tmp_path, next(counter))
            if outcomes is not None:
                wrong = {pair: why for pair, why in outcomes.items() if why not in SUBSTANTIVE}
                assert not wrong, f"challenges against an honest round did not fail for a substantive reason: {wrong}"
                seen_outcomes.update(outcomes.values())
            assert settlement.matchers(matcher).bond == market.params.min_matcher_bond
        finally:
            chain.restore(snapshot[0])
            snapshot[0] = chain.snapshot()

    check()
    # The examples exercised the refusals that need the allocation to be right, not just trivial ones.
    assert {"WitnessNotPricier", "BidFullyFilled"} <= seen_outcomes, seen_outcomes
    assert "WitnessDurationTooLong" in seen_outcomes and "StakeDecreasedAfterReceipt" in seen_outcomes, seen_outcomes


# ----------------------------------------------------------------------------------------------
# the checker is not blind, and the matcher keeps its promises across rounds
# ----------------------------------------------------------------------------------------------


def test_checker_finds_a_passed_over_bid(market, chain, settlement, court, matcher, players, matcher_process):
    """The same checker, on a round that passes over a receipted bid (settled by hand with the
    matcher's key instead of by its clearing), finds exactly that bid's challenge valid, and the
    provider's challenge in the court slashes the matcher."""
    m = market
    buyers, providers = players
    with matcher_process.client() as http:
        cheap = m.bid(providers[4], capacity=2, price=UBC)
        dear = m.bid(providers[3], capacity=3, price=2 * UBC)
        receipts = {}
        for bid, sig in (cheap, dear):
            r = _post(http, "/bids", bid, sig)
            assert r.status_code == 201, r.text
            receipts[r.json()["digest"]] = r.json()["receipt"]
        order = m.order(buyers[3], units=2, duration=HOUR, max_price=3 * UBC)
        first_block = chain.blocks.height + 1
        m.settle([order], [dear], [(0, 0, 2)], {H100: 2 * UBC}, round_id=1)
        leases = round_leases(settlement, 1, first_block, chain.blocks.height)
        outcomes = challenge_outcomes(http, court, 1, receipts, leases)
        cheap_digest, dear_digest = ("0x" + b.digest(m.domain).hex() for b, _ in (cheap, dear))
        assert {k[0]: v for k, v in outcomes.items()} == {cheap_digest: "SUCCEEDS", dear_digest: "WitnessNotPricier"}
        bond = settlement.matchers(matcher).bond
        court.challenge(*challenge_args(http, 1, receipts[cheap_digest], leases[0]), sender=providers[4])
    assert settlement.matchers(matcher).bond < bond


def test_no_receipt_beyond_free_stake_right_after_a_round(
    market, chain, settlement, court, matcher, players, matcher_process
):
    """A round locks a provider's whole stake; a bid it posts right afterwards must not be
    receipted (its free stake covers nothing), or the next round, which cannot fill that bid,
    becomes challengeable although the matcher cleared it correctly."""
    m = market
    buyers, providers = players
    p, rival = providers[0], providers[3]  # p has 2 units of stake
    with matcher_process.client() as http:
        assert _post(http, "/bids", *m.bid(p, capacity=2, price=UBC)).status_code == 201
        assert _post(http, "/orders", *m.order(buyers[3], units=2, duration=HOUR, max_price=3 * UBC)).status_code == 201
        assert matcher_process.close_round().json()["state"] == "confirmed"
        assert settlement.availableStake(p) == 0

        late = _post(http, "/bids", *m.bid(p, capacity=2, price=UBC))  # right after the round

        # Round 2: a dearer bid and an order the late bid could serve.
        w = _post(http, "/bids", *m.bid(rival, capacity=2, price=2 * UBC))
        assert w.status_code == 201
        assert _post(http, "/orders", *m.order(buyers[2], units=2, duration=HOUR, max_price=3 * UBC)).status_code == 201
        first_block = chain.blocks.height + 1
        report = matcher_process.close_round().json()
        assert report["state"] == "confirmed" and report["round_id"] == 2
        receipts = {r.json()["digest"]: r.json()["receipt"] for r in (late, w) if r.status_code == 201}
        leases = round_leases(settlement, 2, first_block, chain.blocks.height)
        outcomes = challenge_outcomes(http, court, 2, receipts, leases)
    assert_unchallengeable(outcomes, 2)
    assert late.status_code == 400 and late.json()["detail"][0]["field"] == "capacity", late.text


def test_an_order_about_to_expire_does_not_strand_a_cheaper_bid(
    market, chain, settlement, court, matcher, players, matcher_process
):
    """The order the cheap bid would be cleared against expires before a batch could be sure to
    land. Before, the matcher cleared it, the settle reverted when mined, and the round had to be
    cleared again; now a message expiring within the notice period never enters a round, so the
    round is cleared once, and right: the cheaper receipted bid takes the remaining order rather
    than stay idle while the dearer bid wins it."""
    m = market
    buyers, providers = players
    with matcher_process.client() as http:
        cheap = m.bid(providers[3], capacity=1, price=UBC, max_duration=24 * HOUR)
        dear = m.bid(providers[4], capacity=1, price=2 * UBC, max_duration=HOUR)
        receipts = {}
        for bid, sig in (cheap, dear):
            r = _post(http, "/bids", bid, sig)
            assert r.status_code == 201, r.text
            receipts[r.json()["digest"]] = r.json()["receipt"]
        # Only the cheap bid accepts the 2-hour order, which expires within the notice period.
        now = chain.blocks.head.timestamp
        short_lived = m.order(buyers[3], units=1, duration=2 * HOUR, max_price=3 * UBC,
                              deadline=now + settlement.noticePeriod() - 5)
        other = m.order(buyers[2], units=1, duration=HOUR, max_price=3 * UBC)
        assert _post(http, "/orders", *short_lived).status_code == 201
        assert _post(http, "/orders", *other).status_code == 201
        first_block = chain.blocks.height + 1
        report = matcher_process.close_round().json()
        assert report["round_id"] == 1 and report["state"] == "confirmed", report
        assert settlement.isRoundFinal(matcher, 1)
        leases = round_leases(settlement, 1, first_block, chain.blocks.height)
        outcomes = challenge_outcomes(http, court, 1, receipts, leases)
        short_view = http.get(f"/orders/0x{short_lived[0].digest(m.domain).hex()}").json()
        cheap_view = http.get(f"/bids/0x{cheap[0].digest(m.domain).hex()}").json()
    # The scenario happened as described: the short-lived order has no lease, and the cheap bid
    # serves the other order.
    short_digest = short_lived[0].digest(m.domain)
    assert all(bytes(lease.orderDigest) != short_digest for lease in leases)
    assert [bytes(lease.bidDigest) for lease in leases] == [cheap[0].digest(m.domain)]
    assert_unchallengeable(outcomes, 1)
    # And the matcher's books agree with the chain about what was filled.
    cheap_left = settlement.remainingOf(cheap[0].digest(m.domain), cheap[0].provider, cheap[0].nonce, 1)
    assert cheap_view["filled"] == 1 - cheap_left == 1, cheap_view
    assert short_view["filled"] == 0, short_view


# Postgres too: there the per-signer admission lock, not a process's cache, prevents it.
@on_both_stores
def test_concurrent_bids_cannot_overbook_the_stake(market, chain, settlement, players, matcher_process):
    """The reservation rule must hold under concurrency: a provider firing many bids at once gets
    receipts for no more units than its free stake covers. (Otherwise it can make the matcher
    receipt bids it cannot fill, and then challenge the round that leaves them out.)"""
    m = market
    _, providers = players
    overbooked = {}
    for p in (providers[1], providers[2], providers[3]):  # 3, 5 and 8 units of stake
        stakeable = settlement.availableStake(p) // m.params.stake_per_unit
        bids = [m.bid(p, capacity=2, price=UBC) for _ in range(16)]
        start = threading.Barrier(len(bids))

        def post(bid, start=start):
            with matcher_process.client() as http:
                start.wait()
                return _post(http, "/bids", *bid)

        with ThreadPoolExecutor(len(bids)) as pool:
            answers = list(pool.map(post, bids))
        assert all(r.status_code in (201, 400) for r in answers), [r.text for r in answers]
        receipted = sum(b.capacity for (b, _), r in zip(bids, answers, strict=True) if r.status_code == 201)
        assert receipted >= min(stakeable, 2)  # the test is not vacuous: some bids were taken
        if receipted > stakeable:
            overbooked[p.address] = (receipted, stakeable)
    assert not overbooked, f"units receipted vs units the free stake covers, per provider: {overbooked}"


def test_a_receipt_is_dated_by_the_block_its_stake_was_read_at(market, chain, settlement, players, matcher_process):
    """Finding 10: a receipt's `issuedAt` is the timestamp of a block at which the provider's
    available stake covered the bid (with its other open bids), read back at that block number.
    A provider that announces an unstake right after a receipt, and bids again at once, gets
    either a refusal or a receipt dated no later than its unstake, so the unstake excuses the
    matcher (`StakeDecreasedAfterReceipt`) instead of making it challengeable on stale stake."""
    m = market
    _, providers = players
    p = providers[2]  # 5 units of stake
    spu = m.params.stake_per_unit
    w3 = chain.provider.web3
    view = w3.eth.contract(address=settlement.address, abi=[{
        "type": "function", "name": "availableStake", "stateMutability": "view",
        "inputs": [{"name": "provider", "type": "address"}], "outputs": [{"name": "", "type": "uint256"}],
    }])
    first_block = chain.blocks.height
    with matcher_process.client() as http:
        first = _post(http, "/bids", *m.bid(p, capacity=2, price=UBC))
        assert first.status_code == 201, first.text
        # The next block gets its own timestamp, so "the block at issuedAt" is unambiguous.
        chain.pending_timestamp = chain.blocks.head.timestamp + 5
        settlement.requestUnstake(3 * spu, sender=p)  # 2 units stay available: no room for 2 more
        unstaked_at = chain.blocks.head.timestamp
        second = _post(http, "/bids", *m.bid(p, capacity=2, price=UBC))
    receipted = [(first.json()["receipt"], 2)]
    if second.status_code == 201:
        receipted.append((second.json()["receipt"], 4))
        assert second.json()["receipt"]["issuedAt"] < unstaked_at
    else:
        assert second.status_code == 400 and second.json()["detail"][0]["field"] == "capacity", second.text
    for receipt, units in receipted:
        blocks = [n for n in range(first_block, chain.blocks.height + 1)
                  if w3.eth.get_block(n)["timestamp"] == receipt["issuedAt"]]
        assert blocks, f"no block has the receipt's issuedAt {receipt['issuedAt']}"
        # Blocks sharing that timestamp all lie before the unstake, which has its own.
        for n in blocks:
            assert view.functions.availableStake(p.address).call(block_identifier=n) >= units * spu
