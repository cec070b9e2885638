"""The matcher service: accepts signed messages and runs rounds.

Pipeline: api -> validation -> store -> clearing -> submission. This module only wires the
stages together and owns the round lifecycle; each stage lives in its own module.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import StrEnum

import coincurve
from eth_account.signers.local import LocalAccount

from underbid.chain.retry import retry_rpc
from underbid.chain.view import ChainView, to_binding
from underbid.matcher import failpoints
from underbid.matcher.clearing import BidLot, Clearing, OrderLot, clear
from underbid.matcher.explain import NO_BIDS_DETAIL, unmatched_orders
from underbid.matcher.leadership import NotLeader, PostgresLeadership, SoleLeader
from underbid.matcher.store import (
    BatchState,
    DuplicateMessage,
    Match,
    MessageKind,
    RoundState,
    Store,
    StoredMessage,
    StoredRound,
)
from underbid.matcher.submission import Landed, Refused, StillPending, Submitter, split_batches
from underbid.matcher.validation import Accepted, Rejection, Rejections, Submission, Validator, order_cost
from underbid.protocol.eip712 import Receipt, sign_digest
from underbid.protocol.markets import canonical_spec
from underbid.protocol.pricing import explain_price

log = logging.getLogger("underbid.matcher.rounds")


@dataclass(frozen=True)
class RoundReport:
    """What one call to `close_round` did, for logs and the API."""

    round_id: int | None
    state: str
    orders: int = 0
    bids: int = 0
    matches: int = 0
    dropped: int = 0
    prices: dict[str, int] | None = None
    gas_used: int = 0
    seconds: dict[str, float] | None = None
    #: market -> what set its price (`underbid.protocol.pricing.PriceRule` values)
    price_rules: dict[str, str] | None = None
    #: market -> the price with its reason, for people (`PriceRule.explain`)
    price_reasons: dict[str, str] | None = None


#: A round close re-checks the cancel requests of the messages in markets with one side open only
#: while there are at most this many (one JSON-RPC batch of that many reads); beyond that they are
#: checked when their market can trade, or drop out at their deadline.
IDLE_CANCEL_CHECKS = 5_000


class Progress(StrEnum):
    """Where `_advance` left a round."""

    CONFIRMED = "confirmed"  # final on chain, every landed batch's fills applied
    PENDING = "pending"  # a signed transaction the chain has not decided yet
    RECLEAR = "reclear"  # nothing of it landed or can land: clear it again
    STUCK = "stuck"  # a batch is refused and no message could be blamed
    FAILED = "failed"  # the chain closed the round before anything landed


@dataclass(frozen=True)
class Advance:
    """The outcome of carrying a round's batches on: a state, why, and a message to drop."""

    progress: Progress
    reason: str = ""
    culprit: str | None = None
    dropped: int = 0


class Matcher:
    def __init__(
        self, chain: ChainView, store: Store, account: LocalAccount,
        leadership: SoleLeader | PostgresLeadership | None = None,
    ):
        self.chain = chain
        #: Whether this process may close rounds and submit (always, over a SQLite store); with
        #: several processes on one Postgres store also the cross-process intake locks.
        self.leadership = leadership or SoleLeader()
        #: Set once this process, as leader, has reconciled: only then does it close rounds. A
        #: sole process (SQLite) leads from the start, as before leadership existed.
        self._took_over = threading.Event()
        if not self.leadership.shared_store:
            self._took_over.set()
        self.store = store
        self.account = account
        self.domain = chain.book.domain
        self.address: str = account.address
        self.validator = Validator(self.domain, chain, store, self.address)
        self._round_lock = threading.Lock()
        # Intake holds it shared (many requests commit at once, their commits grouped); the round
        # snapshot and the application of a round's fills hold it exclusive, so a receipted bid
        # is always in its round's snapshot and validation never mixes stake read before a
        # settlement with reservations counted after it.
        self._intake_lock = SharedExclusiveLock()
        #: provider -> (its lock, how many requests hold or wait for it): freed when unused.
        self._provider_locks: dict[str, tuple[threading.Lock, int]] = {}
        self._provider_locks_guard = threading.Lock()
        #: `store.fills_applied()` when this process last made sure its chain cache postdates them.
        self._fills_seen = -1
        self.submitter = Submitter(chain, store, account)
        self._signing_key = coincurve.PrivateKey(bytes(account.key))
        #: The round taking messages; changes only under the exclusive intake lock. With several
        #: processes on one store the leader changes it in the store, so intake reads it there.
        with self._intake_exclusive():
            self._intake_round = store.open_round()

    @contextmanager
    def _intake_exclusive(self) -> Iterator[None]:
        """Pauses intake in this process and, over a shared store, in every process."""
        with self._intake_lock.exclusive(), self.leadership.intake_exclusive():
            yield

    def intake_round(self) -> int | None:
        """The round taking messages now (a read: creates nothing)."""
        if self.leadership.shared_store:
            return self.store.current_round()
        return self._intake_round

    def _require_leader(self) -> None:
        """Raises NotLeader unless this process leads and has finished taking over (reconciled)."""
        self.leadership.ensure_leader()
        if not self._took_over.is_set():
            raise NotLeader("this matcher process is taking over as leader (reconciling): try again shortly")

    def leads(self) -> bool:
        """Whether this process leads and has taken over (a cheap check, no round trip)."""
        return self.leadership.is_leader and self._took_over.is_set()

    def lost_leadership(self) -> None:
        """Stops leading at once: no new close starts, and a round waiting on the chain returns."""
        self._took_over.clear()
        self.stop()
    @contextmanager
    def _provider_lock(self, provider: str) -> Iterator[None]:
        """Holds the provider's lock; the lock is forgotten once no request holds or awaits it."""
        with self._provider_locks_guard:
            lock, users = self._provider_locks.get(provider, (threading.Lock(), 0))
            self._provider_locks[provider] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._provider_locks_guard:
                lock, users = self._provider_locks[provider]
                if users == 1:
                    del self._provider_locks[provider]
                else:
                    self._provider_locks[provider] = (lock, users - 1)

    def stop(self) -> None:
        """Makes a round waiting on the chain return at once (its transaction stays signed)."""
        self.submitter.stopping.set()

    def shutdown(self) -> None:
        """Stops waiting on the chain, waits for a round being settled to return, then gives the
        leader lock up and closes the store: whoever closes rounds (timer or API), the store is
        never closed under them."""
        self.stop()
        with self._round_lock:
            self.leadership.stop()
            self.store.close()

    # ----- intake -----

    def accept(self, kind: MessageKind, message, signature_hex: str, spec: str | None = None) -> Accepted:
        """Validates and commits one message; raises its Rejection. See `accept_batch`."""
        try:
            return self.accept_batch(kind, [Submission(message, signature_hex, spec)])[0]
        except Rejections as refused:
            raise refused.items[0][1] from None

    def accept_batch(self, kind: MessageKind, submissions: Sequence[Submission]) -> list[Accepted]:
        """Validates and commits messages of one kind, all or none (a provider's price ladder, say).
        Returns only after the commit; raises Rejections naming every refused message.

        A bid gets a receipt for the round that is open *while the bid is committed*: intake and
        the round snapshot share a lock, so a receipted bid is always in its round's snapshot.
        A provider's bids are checked and committed under the provider's lock, so concurrent
        requests cannot together reserve more stake than the provider has.
        """
        if not submissions:
            return []
        providers = sorted({s.message.signer for s in submissions}) if kind is MessageKind.BID else []
        with self._intake_lock.shared(), ExitStack() as held:
            for provider in providers:  # in sorted order, so two batches cannot deadlock
                held.enter_context(self._provider_lock(provider))
            # Other matcher processes sharing a Postgres store wait while this one checks these
            # signers' stake or escrow and commits (a no-op with SQLite, which one process owns).
            held.enter_context(self.store.admission(s.message.signer for s in submissions))
            # ...and the intake lock across processes: the leader's close of intake waits for it.
            held.enter_context(self.leadership.intake_shared())
            if self.leadership.shared_store:
                self._forget_stale_chain_reads()
            # Validation holds the intake lock (shared) throughout: the stake it reads and the
            # reservations it counts then stand at the same block (fills are applied exclusively).
            # No retry here: a request handler answers 503 at once rather than wait on the node.
            accepted = self.validator.check(kind, submissions)
            # Stable while the intake lock is held shared (here and, over a shared store, everywhere).
            round_id = self._intake_round_for_intake()
            if kind is MessageKind.BID:
                for a in accepted:
                    assert a.stake_read_at is not None
                    a.receipt = self._receipt(a.digest, round_id, a.stake_read_at)
            try:
                rows = [(kind, a.digest, a.message, a.signature, a.receipt) for a in accepted]
                self.store.add_messages(rows, round_id)
            except DuplicateMessage:  # the same message, or its nonce, raced in through another request
                raise self._raced(kind, accepted) from None
        named = {s.message.market: canonical_spec(s.spec) for s in submissions if s.spec is not None}
        if named:
            self.store.name_markets(named)
        return accepted

    def _forget_stale_chain_reads(self) -> None:
        """Over a shared store the leader applies a batch's fills under the exclusive intake lock,
        but invalidates only its own chain cache. Stake or escrow this process cached before that
        settlement, beside reservations counted after its fills (a filled bid reserves nothing),
        would admit more than the signer has, and a receipted bid its stake cannot back makes the
        matcher challengeable. The store's count of batches whose fills were applied (stable while
        the intake lock is held shared) says when to read the chain afresh. (Call it holding the
        intake lock shared.)"""
        applied = self.store.fills_applied()
        if applied != self._fills_seen:
            self.chain.cache.invalidate()
            self._fills_seen = applied

    def _intake_round_for_intake(self) -> int:
        if not self.leadership.shared_store:
            return self._intake_round
        current = self.store.current_round()
        # Some round is always open once any process started (each opens one at start, under
        # the exclusive lock); this covers a store another process is creating right now.
        return current if current is not None else self.store.open_round()

    def _fail_round(self, round_id: int, why: str) -> None:
        """Marks a round failed, fenced: unlike the store's other round transitions this one is not
        conditional on the round's state, so a zombie leader must not make it."""
        self.leadership.ensure_leader()
        self.store.fail_round(round_id, why)

    def _raced(self, kind: MessageKind, accepted: list[Accepted]) -> Rejections:
        """The refusal of a request that lost a race to another request with the same message
        (409 naming `signature`) or the same (signer, nonce) (409 naming `nonce`)."""
        raced = self.store.stored_digests([a.digest for a in accepted])
        holders = self.store.open_nonce_holders([(a.message.signer, a.message.nonce) for a in accepted])
        refused = []
        for i, a in enumerate(accepted):
            holder = holders.get((a.message.signer, a.message.nonce))
            if a.digest in raced:
                why = f"duplicate: {kind.value} {a.digest} was already accepted"
                refused.append((i, Rejection(409, "signature", why)))
            elif holder is not None:
                why = f"nonce {a.message.nonce} belongs to the open message {holder[0]}"
                refused.append((i, Rejection(409, "nonce", why)))
        if not refused:  # it raced and lost, but the winner is gone again: let the client retry
            retry = Rejection(409, "signature", "a concurrent request conflicted: retry")
            refused = [(i, retry) for i in range(len(accepted))]
        return Rejections(tuple(refused))

    def _receipt(self, bid_digest: str, round_id: int, issued_at: int) -> dict:
        """The signed receipt for a bid: `issued_at` is the timestamp of the block at which the
        provider's stake was read (a challenge is excused by any stake decrease from then on)."""
        values = {"matcher": self.address, "bid_hash": bid_digest, "round": round_id, "issued_at": issued_at}
        signature = sign_digest(self._signing_key, Receipt.digest_of(self.domain, values))
        return {
            "matcher": self.address, "bidHash": bid_digest, "round": round_id, "issuedAt": issued_at,
            "signature": "0x" + signature.hex(),
        }

    # ----- rounds -----

    def reconcile(self, timeout: float = 5.0) -> list[int]:
        """Finishes rounds a crash interrupted, and makes new round ids exceed the matcher's last
        round on chain (the contract takes only increasing ids). A transaction the chain has not
        decided within `timeout` is left signed, for the next close to follow again."""
        self.leadership.ensure_leader()
        signer = retry_rpc(lambda: self.chain.receipt_signer(self.address))
        if signer != self.address:
            log.error("this matcher's receipt signer on chain is %s, not its own key %s: its receipts will not"
                      " verify (bond with bondMatcher(amount, %s))", signer, self.address, self.address)
        with self._round_lock:
            done, _ = self._finish_unfinished(timeout)
            with self._intake_exclusive():
                last = retry_rpc(lambda: self.chain.last_round(self.address))
                round_id = self.store.open_round(min_id=last + 1)
                if round_id <= last:
                    # Receipts already name this id; they stay valid for the later id (a receipt
                    # covers its round and every later one).
                    log.warning("round id %s is not above this matcher's last round on chain (%s); skipping it",
                                round_id, last)
                    self._fail_round(round_id, f"round id not above the last round on chain ({last})")
                    round_id = self.store.open_round(min_id=last + 1)
                self._intake_round = round_id
            if self.leadership.is_leader:
                self._took_over.set()
            return done

    def _finish_unfinished(self, timeout: float) -> tuple[list[int], RoundReport | None]:
        """Carries every cleared, submitted or closed-but-uncleared round on from its stored state,
        oldest first. Returns the rounds finished, and the report of one still waiting on the
        chain (later rounds wait for it: a new round id would close it on chain)."""
        done: list[int] = []
        unfinished = self.store.rounds_in(RoundState.CLEARED, RoundState.SUBMITTED)
        for round_id in sorted({r.id for r in unfinished} | set(self.store.closed_uncleared_rounds())):
            stored = self.store.get_round(round_id)
            assert stored is not None
            if stored.state is RoundState.OPEN:  # stopped between snapshot and clearing: nothing was sent
                report = self._settle_snapshot(round_id, *self._snapshot_of(round_id))
            else:
                advance = self._advance(round_id, timeout)
                if advance.progress is Progress.RECLEAR:
                    report = self._reclear(round_id, advance)
                else:
                    report = self._report(round_id, advance)
            if report.state == RoundState.FAILED.value:
                continue
            if report.state == RoundState.OPEN.value:
                # Nothing is left to match: the round never settles, so none of its receipts can
                # be used in a challenge, and its open messages go to the next round.
                self._fail_round(round_id, "nothing left to match when the round was finished")
            elif report.state != RoundState.CONFIRMED.value:
                return done, report
            done.append(round_id)
        return done, None

    def _reclear(self, round_id: int, advance: Advance) -> RoundReport:
        """Clears a round again from its snapshot, none of whose batches landed or can land."""
        self.store.reset_clearing(round_id, advance.culprit, f"dropped from round {round_id}: {advance.reason}")
        log.warning("round %s: clearing again: %s", round_id, advance.reason)
        return self._settle_snapshot(round_id, *self._snapshot_of(round_id))

    def _snapshot_of(self, round_id: int) -> tuple[list[StoredMessage], list[StoredMessage]]:
        """The open messages taken in `round_id` or before that stay valid long enough, in the
        markets where both orders and bids are open: no other message can match, and reading (and
        re-checking on chain) 200,000 idle bids took most of a minute (see IDLE_CANCEL_CHECKS)."""
        self.chain.cache.invalidate()
        horizon = self._settle_horizon()
        order_markets = self.store.open_markets(MessageKind.ORDER, horizon, round_upto=round_id)
        bid_markets = self.store.open_markets(MessageKind.BID, horizon, round_upto=round_id)
        tradable = sorted(order_markets & bid_markets)
        idle = sorted((order_markets | bid_markets) - set(tradable))
        if idle and self.store.count_open(horizon, idle, round_upto=round_id) <= IDLE_CANCEL_CHECKS:
            # Messages no round can match still hold their signer's stake or escrow at intake:
            # drop those whose cancellation was requested, as for the rest, while that is cheap.
            self._without_cancel_requests(
                self.store.open_messages(MessageKind.ORDER, horizon, round_upto=round_id, markets=idle),
                self.store.open_messages(MessageKind.BID, horizon, round_upto=round_id, markets=idle),
            )
            # The orders of markets without a bid are not cleared: tell them why here (within the
            # same bound, so a round over many idle messages does not rewrite them all each time).
            without_bids = sorted(order_markets - bid_markets)
            if without_bids:
                self.store.note_no_bids(round_id, horizon, without_bids, NO_BIDS_DETAIL)
        if not tradable:
            return [], []
        return (
            self.store.open_messages(MessageKind.ORDER, horizon, round_upto=round_id, markets=tradable),
            self.store.open_messages(MessageKind.BID, horizon, round_upto=round_id, markets=tradable),
        )

    def _settle_horizon(self) -> int:
        """The earliest deadline a message needs to enter a round now: chain time plus the notice
        period. A batch may land any time before its own deadline (within half the notice), so a
        message expiring sooner could make it revert; the court does not count such a bid against
        the matcher (`BidExpiredBeforeWitness`), and orders are not challengeable."""
        return retry_rpc(self.chain.fresh_head).timestamp + self.chain.notice_period

    def close_round(self) -> RoundReport:
        """Clears the open round on a snapshot of the store and settles it on chain.

        An earlier round still unfinished is carried on first; while its transaction is pending,
        no new round starts (its report is returned). A round with nothing to match stays open
        (no transaction is sent for it).
        """
        self._require_leader()
        with self._round_lock:
            started = time.perf_counter()
            _, waiting = self._finish_unfinished(self.submitter.receipt_timeout)
            if waiting is not None:
                return waiting
            with self._intake_exclusive():
                round_id = self._intake_round_for_intake()
                self._intake_round = self.store.close_intake(round_id)
            # Messages committed from here on belong to the next round: the snapshot needs no lock.
            orders, bids = self._snapshot_of(round_id)
            report = self._settle_snapshot(round_id, orders, bids, started)
            if report.state == RoundState.OPEN.value:
                with self._intake_exclusive():
                    self._intake_round = self.store.reopen_intake(round_id, self._intake_round)
            return report

    def _settle_snapshot(
        self, round_id: int, orders: list[StoredMessage], bids: list[StoredMessage], started: float | None = None
    ) -> RoundReport:
        """Clears a round's snapshot and settles it. While nothing of the round has landed, a
        message the chain refuses is dropped and the round cleared again from the rest."""
        started = time.perf_counter() if started is None else started
        orders, bids = self._without_cancel_requests(orders, bids)
        t_snapshot = time.perf_counter()
        dropped_total = 0
        # Each pass drops a message, or follows a first batch that never landed; a few spare
        # passes bound the latter, after which the round waits for the next close.
        for _ in range(len(orders) + len(bids) + 3):
            clearing, dropped, lots = self._clear_fundable(orders, bids)
            dropped_total += dropped
            live = self.store.stored_digests([s.digest for s in orders + bids], only_open=True)
            orders = [s for s in orders if s.digest in live]
            bids = [s for s in bids if s.digest in live]
            t_clear = time.perf_counter()
            # Every order left (partly) unmatched is told why, as of this clearing (a later pass
            # of the same round, or a later round, says it again); one served in full forgets it.
            order_lots, bid_lots = lots
            notes = unmatched_orders(order_lots, bid_lots, clearing, round_id)
            self.store.note_unmatched(notes, served=[lot.key for lot in order_lots if lot.key not in notes])
            if not clearing.matches:
                return RoundReport(round_id, RoundState.OPEN.value, len(orders), len(bids), dropped=dropped_total)

            bid_price = {s.digest: s.bid.price for s in bids}
            matches = [Match(m.order_key, m.bid_key, m.units, mc.market) for mc in clearing.markets for m in mc.matches]
            # Batches are cut from the matches sorted by (market, bid price ascending): if a later
            # batch of a split round never lands, the bids it leaves unused are the pricier ones
            # of their market, and no lease that did land can be a pricier witness against them.
            matches.sort(key=lambda m: (m.market, bid_price[m.bid]))
            prices = dict(clearing.prices)
            block_gas_limit = retry_rpc(lambda: self.chain.w3.eth.get_block("latest")["gasLimit"])
            record = {
                "prices": {k: str(v) for k, v in prices.items()},
                "price_rules": {k: rule.value for k, rule in clearing.price_rules.items()},
                "matches": [m.__dict__ for m in matches],
                "priced_out_orders": [d for mc in clearing.markets for d in mc.dropped_orders],
            }
            self.store.record_clearing(round_id, record, split_batches(matches, prices, block_gas_limit))
            failpoints.hit("after_clearing")
            advance = self._advance(round_id, self.submitter.receipt_timeout)
            if advance.progress is Progress.RECLEAR:
                log.warning("round %s: clearing again: %s", round_id, advance.reason)
                self.store.reset_clearing(round_id, advance.culprit, f"dropped from round {round_id}: {advance.reason}")
                if advance.culprit is not None:
                    # Leave it out of the next clearing too (the snapshot lists still hold it).
                    orders = [s for s in orders if s.digest != advance.culprit]
                    bids = [s for s in bids if s.digest != advance.culprit]
                    dropped_total += 1
                continue
            dropped_total += advance.dropped
            report = self._report(round_id, advance, len(orders), len(bids), dropped_total)
            if report.state == RoundState.CONFIRMED.value:
                report = RoundReport(**{**report.__dict__, "seconds": {
                    "snapshot": round(t_snapshot - started, 4),
                    "clear": round(t_clear - t_snapshot, 4),
                    "settle": round(time.perf_counter() - t_clear, 4),
                }})
                log.info("round %s", json.dumps(report.__dict__, default=str))
            return report
        log.error("round %s: no settleable allocation found; it is cleared again at the next close", round_id)
        return RoundReport(round_id, RoundState.OPEN.value, len(orders), len(bids), dropped=dropped_total)

    def _report(
        self, round_id: int, advance: Advance, orders: int = 0, bids: int = 0, dropped: int = 0
    ) -> RoundReport:
        """The report of a round whose batches `_advance` carried as far as the chain allows."""
        stored = self.store.get_round(round_id)
        assert stored is not None
        mined = [b for b in stored.batches if b.state is BatchState.MINED]
        if advance.progress is not Progress.CONFIRMED:
            log.warning("round %s is %s: %s", round_id, stored.state.value, advance.reason)
        prices = {k: int(v) for k, v in (stored.clearing or {}).get("prices", {}).items()}
        rules = {k: str(v) for k, v in (stored.clearing or {}).get("price_rules", {}).items()}
        return RoundReport(
            round_id=round_id,
            state=stored.state.value,
            orders=orders,
            bids=bids,
            matches=sum(len(b.payload.matches) for b in mined),
            dropped=dropped,
            prices=prices,
            gas_used=sum(b.gas_used or 0 for b in mined),
            price_rules=rules,
            price_reasons={market: explain_price(price, rules.get(market)) for market, price in prices.items()},
        )

    def _advance(self, round_id: int, timeout: float) -> Advance:
        """Moves a cleared or submitted round's batches through their states, in order, one store
        transaction per step, until the round is confirmed, must be cleared again (nothing of it
        landed or can land), or waits on the chain."""
        dropped = 0
        just_sent: str | None = None  # the hash broadcast a moment ago, not to be sent again at once
        while True:
            stored = self.store.get_round(round_id)
            assert stored is not None
            on_chain = self.submitter.round_state(round_id)
            batch = next((b for b in stored.batches if b.state is not BatchState.MINED), None)
            if batch is None:
                self.store.confirm_round(round_id)
                return Advance(Progress.CONFIRMED, dropped=dropped)
            nothing_landed = on_chain.batches == 0 and batch.batch == 0
            if on_chain.batches > batch.batch and batch.state is not BatchState.SIGNED:
                # The chain holds this batch although the store says it did not land: only this
                # matcher settles its rounds, so it is our transaction; its receipt settles it.
                landed = self.submitter.fate(batch.tx) if batch.tx is not None else None
                if not isinstance(landed, Landed):
                    return Advance(Progress.STUCK, f"batch {batch.batch} is on chain but its transaction is not"
                                   " the one stored", dropped=dropped)
                with self._intake_exclusive():
                    self.store.record_mined(round_id, batch.batch, landed.gas_used, landed.fills)
                    self.chain.cache.invalidate()
                continue
            if batch.state is BatchState.SIGNED:
                assert batch.tx is not None
                outcome = self.submitter.follow(batch.tx, timeout, just_sent=batch.tx.tx_hash == just_sent)
                if isinstance(outcome, StillPending):
                    return Advance(Progress.PENDING, outcome.reason, dropped=dropped)
                if isinstance(outcome, Landed):
                    # Applied while intake pauses: validation never mixes stake read before the
                    # settlement with reservations counted after it.
                    with self._intake_exclusive():
                        self.store.record_mined(round_id, batch.batch, outcome.gas_used, outcome.fills)
                        self.chain.cache.invalidate()
                else:
                    log.warning("round %s batch %s did not land: %s", round_id, batch.batch, outcome.reason)
                    self.store.record_dead(round_id, batch.batch, outcome.reason)
                continue
            if on_chain.final:
                # The round takes no more batches (its span passed, say, or a later round opened):
                # the batches left out hold only the pricier bids of their markets.
                if on_chain.batches == 0:
                    self._fail_round(round_id, "the round closed on chain before any batch landed")
                    return Advance(Progress.FAILED, "closed on chain with nothing landed", dropped=dropped)
                for rest in stored.batches[batch.batch:]:
                    why = f"round final on chain after {on_chain.batches} batches"
                    self.store.record_dead(round_id, rest.batch, why)
                self.store.confirm_round(round_id)
                return Advance(Progress.CONFIRMED, dropped=dropped)
            if batch.state is BatchState.DEAD:
                if nothing_landed:  # known not to land: the allocation may be stale, clear again
                    return Advance(Progress.RECLEAR, batch.reason or "its first batch did not land", dropped=dropped)
                self.store.retry_batch(round_id, batch.batch)  # the round's prices are fixed: resend it
                continue
            final = batch.batch == len(stored.batches) - 1
            prepared = self.submitter.prepare(round_id, batch.batch, final, batch.payload)
            if isinstance(prepared, Refused):
                if prepared.culprit is None:
                    return Advance(Progress.STUCK, prepared.reason, dropped=dropped)
                if nothing_landed:
                    # Removing matches from an exact allocation could leave a cheaper receipted
                    # bid idle while a dearer one wins: clear again without the culprit.
                    return Advance(Progress.RECLEAR, prepared.reason, prepared.culprit, dropped=dropped)
                # Once a batch landed the prices are fixed: drop the culprit's matches and go on.
                log.warning("round %s: dropping %s: %s", round_id, prepared.culprit, prepared.reason)
                self.store.drop_from_batch(round_id, batch.batch, prepared.culprit,
                                           f"dropped from round {round_id}: {prepared.reason}",
                                           batch.payload.without(prepared.culprit))
                dropped += 1
                continue
            # Fenced: a zombie leader (paused or cut off while another process took over) finds
            # its lock session gone here and stops, before it signs and again before it sends.
            self.leadership.ensure_leader()
            tx = self.submitter.sign(round_id, batch.batch, final, batch.payload, prepared)
            self.store.record_signed(round_id, batch.batch, batch.payload, tx)  # before broadcast: the recovery handle
            failpoints.hit("after_signing")
            self.leadership.ensure_leader()
            self.submitter.broadcast(tx.raw or b"")
            just_sent = tx.tx_hash
            failpoints.hit("after_broadcast")

    def _without_cancel_requests(
        self, orders: list[StoredMessage], bids: list[StoredMessage]
    ) -> tuple[list[StoredMessage], list[StoredMessage]]:
        """Drops the snapshot's messages whose signer announced the cancellation of their nonce:
        the honest matcher stops using them at once (the contract voids the nonce only after the
        notice period, and a challenge with such a bid fails with `BidCancelled`)."""
        messages = orders + bids
        if not messages:
            return orders, bids
        requested, _ = retry_rpc(lambda: self.chain.read_fresh(
            [("cancel", s.message.signer, s.message.nonce) for s in messages]
        ))
        cancelled = {s.digest for s, at in zip(messages, requested, strict=True) if at}
        for digest in cancelled:
            log.warning("dropping %s: its nonce has a cancellation requested", digest)
            self.store.drop(digest, "its signer requested the cancellation of its nonce")
        return [s for s in orders if s.digest not in cancelled], [s for s in bids if s.digest not in cancelled]

    def _clear_fundable(
        self, orders: list[StoredMessage], bids: list[StoredMessage]
    ) -> tuple[Clearing, int, tuple[list[OrderLot], list[BidLot]]]:
        """Clears, then corrects for what the chain can no longer honour, and clears again.

        Checked with fresh (uncached) reads at one block: each matched message's remaining units
        on chain (a message partly filled elsewhere is capped to what is left, so it is still used
        up to its real capacity; a void one or one whose nonce another message took is dropped),
        its nonce's cancellation request and its signer's binding (dropped unless bound to this
        matcher with no change pending), each buyer's available escrow against its matched cost,
        and each provider's available stake against its matched collateral (the account's newest
        matched message is dropped). Returns the final clearing, how many messages were dropped and
        the lots it was cleared from.
        """
        by_digest = {s.digest: s for s in orders + bids}
        caps: dict[str, int] = {}
        dropped = 0
        while True:
            order_lots = [_order_lot(s, caps) for s in orders if s.digest in by_digest]
            bid_lots = [_bid_lot(s, caps) for s in bids if s.digest in by_digest]
            clearing = clear(order_lots, bid_lots)
            corrections = self._unfundable(clearing, by_digest)
            if not corrections:
                return clearing, dropped, (order_lots, bid_lots)
            for digest, left, reason in corrections:
                if left > 0:
                    log.warning("capping %s to %s units: %s", digest, left, reason)
                    caps[digest] = left
                    continue
                log.warning("dropping %s: %s", digest, reason)
                self.store.drop(digest, reason)
                del by_digest[digest]
                dropped += 1

    def _unfundable(self, clearing: Clearing, by_digest: dict[str, StoredMessage]) -> list[tuple[str, int, str]]:
        """The matched messages the chain cannot honour now, as (digest, units it can still fill
        (0: drop it), why), at most one per digest; empty when the whole clearing can settle."""
        cost: dict[str, int] = {}
        units: dict[str, int] = {}
        used: dict[str, int] = {}
        for mc in clearing.markets:
            for m in mc.matches:
                order = by_digest[m.order_key].order
                cost[order.buyer] = cost.get(order.buyer, 0) + order_cost(m.units, mc.price, order.duration)
                bid = by_digest[m.bid_key].bid
                units[bid.provider] = units.get(bid.provider, 0) + m.units
                used[m.order_key] = used.get(m.order_key, 0) + m.units
                used[m.bid_key] = used.get(m.bid_key, 0) + m.units
        if not used:
            return []
        signers = list(dict.fromkeys(by_digest[d].message.signer for d in used))
        keys: list[tuple] = [
            ("remaining", bytes.fromhex(d[2:]), s.message.signer, s.message.nonce, s.total)
            for d in used
            for s in (by_digest[d],)
        ]
        keys += [("cancel", by_digest[d].message.signer, by_digest[d].message.nonce) for d in used]
        keys += [("binding", signer) for signer in signers]
        keys += [("escrow", buyer) for buyer in cost]
        keys += [("stake", provider) for provider in units]
        # One JSON-RPC batch, every read at the same block.
        values, block = retry_rpc(lambda: self.chain.read_fresh(keys))
        n = len(used)
        left_on_chain, cancel_requested = values[:n], values[n:2 * n]
        bindings = dict(zip(signers, (to_binding(v) for v in values[2 * n:2 * n + len(signers)]), strict=True))
        funds = values[2 * n + len(signers):]
        escrow = dict(zip(cost, funds[:len(cost)], strict=True))
        stake = dict(zip(units, funds[len(cost):], strict=True))

        corrections: dict[str, tuple[int, str]] = {}
        for (digest, n_used), on_chain, cancel_at in zip(used.items(), left_on_chain, cancel_requested, strict=True):
            signer = by_digest[digest].message.signer
            if not bindings[signer].settled_with(self.address, block.timestamp):
                corrections[digest] = (0, f"{signer} is no longer bound to this matcher, or is changing its matcher")
            elif cancel_at:
                corrections[digest] = (0, "its signer requested the cancellation of its nonce")
            elif on_chain < n_used:
                why = f"only {on_chain} units left on chain (filled elsewhere, or nonce taken)"
                corrections[digest] = (on_chain, why)

        def newest(signer: str) -> str:  # the newest matched message of a signer is the one that overdrew it
            mine = (d for d in used if by_digest[d].message.signer == signer)
            return max(mine, key=lambda d: by_digest[d].received_at)

        for buyer, need in cost.items():
            if escrow[buyer] < need:
                why = f"buyer's available escrow {escrow[buyer]} is below the round's cost {need}"
                corrections.setdefault(newest(buyer), (0, why))
        for provider, n_units in units.items():
            if stake[provider] < n_units * self.chain.stake_per_unit:
                corrections.setdefault(
                    newest(provider),
                    (0, f"provider's available stake {stake[provider]} does not cover {n_units} units"),
                )
        return [(digest, left, reason) for digest, (left, reason) in corrections.items()]

    def round(self, round_id: int) -> StoredRound | None:
        return self.store.get_round(round_id)

    def recheck_cancel(self, kind: MessageKind, digest: str) -> StoredMessage | None:
        """The stored message after re-reading its nonce on chain: an open message whose signer
        requested the cancellation is dropped now, instead of at the next round close (so it stops
        counting as open at once). One fresh read, no retry: an unreachable node raises."""
        stored = self.store.get_message(digest, kind)
        if stored is None or stored.status != "open":
            return stored
        requested, _ = self.chain.read_fresh([("cancel", stored.message.signer, stored.message.nonce)])
        if requested[0]:
            log.info("dropping %s: its signer asked the matcher to see its cancellation request", digest)
            self.store.drop(digest, "its signer requested the cancellation of its nonce")
            return self.store.get_message(digest, kind)
        return stored


def _order_lot(s: StoredMessage, caps: dict[str, int]) -> OrderLot:
    o = s.order
    units = min(s.remaining, caps.get(s.digest, s.remaining))
    return OrderLot(key=s.digest, market=o.market, units=units, duration=o.duration, max_price=o.max_price)


def _bid_lot(s: StoredMessage, caps: dict[str, int]) -> BidLot:
    b = s.bid
    capacity = min(s.remaining, caps.get(s.digest, s.remaining))
    return BidLot(
        key=s.digest, market=b.market, provider=b.provider, capacity=capacity, price=b.price,
        max_duration=b.max_duration,
    )


class SharedExclusiveLock:
    """A readers-writer lock: any number of shared holders, or one exclusive holder.

    A waiting exclusive holder blocks new shared holders, so a round close is not starved by
    a steady stream of submissions.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._waiting_exclusive)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting_exclusive += 1
            self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
            self._waiting_exclusive -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class RoundTimer:
    """Closes a round every `seconds` in a background thread until stopped."""

    def __init__(self, matcher: Matcher, seconds: float):
        self.matcher = matcher
        self.seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="round-timer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stops the timer and waits for a round it is settling (told to stop waiting on the chain),
        so the store is never closed under it."""
        self._stop.set()
        self.matcher.stop()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            if not self.matcher.leads():
                continue  # a follower (or a leader still reconciling) closes nothing
            try:
                self.matcher.close_round()
            except NotLeader as lost:
                log.warning("round not closed: %s", lost)
            except Exception:  # noqa: BLE001 - a failed round is logged; the next one still runs
                log.exception("round failed")
