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

import coincurve
from eth_account.signers.local import LocalAccount

from underbid.matcher import failpoints
from underbid.chain.view import ChainView, to_binding
from underbid.matcher.clearing import BidLot, Clearing, OrderLot, clear
from underbid.protocol.eip712 import Receipt, sign_digest
from underbid.protocol.markets import canonical_spec
from underbid.matcher.store import DuplicateMessage, MessageKind, RoundState, Store, StoredMessage, StoredRound
from underbid.matcher.submission import NeedsReclear, SubmissionError, Submitter, retry_rpc, split_batches
from underbid.matcher.validation import Accepted, Rejection, Rejections, Submission, Validator, order_cost

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


class Matcher:
    def __init__(self, chain: ChainView, store: Store, account: LocalAccount):
        self.chain = chain
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
        self._provider_locks: dict[str, threading.Lock] = {}
        self._provider_locks_guard = threading.Lock()
        self.submitter = Submitter(chain, store, account, confirm_guard=self._applying_fills)
        self._signing_key = coincurve.PrivateKey(bytes(account.key))
        #: The round taking messages; changes only under the exclusive intake lock.
        self._intake_round = store.open_round()

    @contextmanager
    def _applying_fills(self) -> Iterator[None]:
        with self._intake_lock.exclusive():
            yield
            self.chain.cache.invalidate()  # stake and escrow read before the settlement are stale now

    def _provider_lock(self, provider: str) -> threading.Lock:
        with self._provider_locks_guard:
            return self._provider_locks.setdefault(provider, threading.Lock())

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
        providers = sorted({s.message.provider for s in submissions}) if kind is MessageKind.BID else []
        with self._intake_lock.shared(), ExitStack() as held:
            for provider in providers:  # in sorted order, so two batches cannot deadlock
                held.enter_context(self._provider_lock(provider))
            # Validation holds the intake lock (shared) throughout: the stake it reads and the
            # reservations it counts then stand at the same block (fills are applied exclusively).
            accepted = retry_rpc(lambda: self.validator.check(kind, submissions))
            if kind is MessageKind.BID:
                round_id = self._intake_round
                for a in accepted:
                    assert a.stake_read_at is not None
                    a.receipt = self._receipt(a.digest, round_id, a.stake_read_at)
            try:
                self.store.add_messages([(kind, a.digest, a.message, a.signature, a.receipt) for a in accepted])
            except DuplicateMessage:  # the same message, or its nonce, raced in through another request
                raise self._raced(kind, accepted) from None
        named = {s.message.market: canonical_spec(s.spec) for s in submissions if s.spec is not None}
        if named:
            self.store.name_markets(named)
        return accepted

    def _raced(self, kind: MessageKind, accepted: list[Accepted]) -> Rejections:
        """The refusal of a request that lost a race to another request with the same message
        (409 naming `signature`) or the same (signer, nonce) (409 naming `nonce`)."""
        raced = self.store.stored_digests([a.digest for a in accepted])
        holders = self.store.open_nonce_holders([(a.message.signer, a.message.nonce) for a in accepted])
        refused = []
        for i, a in enumerate(accepted):
            holder = holders.get((a.message.signer, a.message.nonce))
            if a.digest in raced:
                refused.append((i, Rejection(409, "signature", f"duplicate: {kind.value} {a.digest} was already accepted")))
            elif holder is not None:
                refused.append((i, Rejection(409, "nonce", f"nonce {a.message.nonce} belongs to the open message {holder[0]}")))
        if not refused:  # it raced and lost, but the winner is gone again: let the client retry
            refused = [(i, Rejection(409, "signature", "a concurrent request conflicted: retry")) for i in range(len(accepted))]
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

    def reconcile(self) -> list[int]:
        """Finishes rounds a crash interrupted, and makes new round ids exceed the matcher's last
        round on chain (the contract takes only increasing ids)."""
        signer = retry_rpc(lambda: self.chain.receipt_signer(self.address))
        if signer != self.address:
            log.error("this matcher's receipt signer on chain is %s, not its own key %s: its receipts will not"
                      " verify (bond with bondMatcher(amount, %s))", signer, self.address, self.address)
        with self._round_lock:
            done = self._finish_unfinished()
            with self._intake_lock.exclusive():
                last = retry_rpc(lambda: self.chain.last_round(self.address))
                round_id = self.store.open_round(min_id=last + 1)
                if round_id <= last:
                    # Receipts already name this id; they stay valid for the later id (a receipt
                    # covers its round and every later one).
                    log.warning("round id %s is not above this matcher's last round on chain (%s); skipping it",
                                round_id, last)
                    self.store.fail_round(round_id, f"round id not above the last round on chain ({last})")
                    round_id = self.store.open_round(min_id=last + 1)
                self._intake_round = round_id
            return done

    def _finish_unfinished(self) -> list[int]:
        """Every round cleared or submitted but not confirmed is settled from where it stopped;
        one whose batches never landed is cleared again from its snapshot (the messages received
        by its close, still open), since its allocation may no longer be sendable as it is."""
        done = []
        for stored in self.store.rounds_in(RoundState.CLEARED, RoundState.SUBMITTED):
            for batch in stored.batches:
                if batch.state == "sent" and batch.tx_hash:
                    self.submitter.await_sent(batch.tx_hash)
            landed = retry_rpc(lambda: self.chain.round_state(self.address, stored.id)).batches
            try:
                if landed:
                    self.submitter.settle_round(self.store.get_round(stored.id))
                else:
                    self.store.reset_clearing(stored.id)
                    self._settle_snapshot_or_abandon(stored.id)
                done.append(stored.id)
            except SubmissionError as exc:
                log.error("round %s could not be reconciled: %s", stored.id, exc)
                self.store.fail_round(stored.id, str(exc))
        for round_id in self.store.closed_uncleared_rounds():
            # Stopped between snapshot and clearing: nothing was sent; clear it now.
            self._settle_snapshot_or_abandon(round_id)
            done.append(round_id)
        return done

    def _settle_snapshot_or_abandon(self, round_id: int) -> None:
        report = self._settle_snapshot(round_id, *self._snapshot_of(round_id))
        if report.state == RoundState.OPEN.value:
            # Nothing is left to match: the round never settles, so none of its receipts can
            # be used in a challenge, and its open messages go to the next round.
            self.store.fail_round(round_id, "nothing left to match when the round was finished")

    def _snapshot_of(self, round_id: int) -> tuple[list[StoredMessage], list[StoredMessage]]:
        self.chain.cache.invalidate()
        horizon = self._settle_horizon()
        cutoff = self.store.closed_at(round_id)
        return (
            self.store.open_messages(MessageKind.ORDER, horizon, received_by=cutoff),
            self.store.open_messages(MessageKind.BID, horizon, received_by=cutoff),
        )

    def _settle_horizon(self) -> int:
        """The earliest deadline a message needs to enter a round now: chain time plus the notice
        period. A batch may land any time before its own deadline (within half the notice), so a
        message expiring sooner could make it revert; the court does not count such a bid against
        the matcher (`BidExpiredBeforeWitness`), and orders are not challengeable."""
        return retry_rpc(self.chain.fresh_head).timestamp + self.chain.notice_period

    def close_round(self) -> RoundReport:
        """Clears the open round on a snapshot of the store and settles it on chain.

        A round with nothing to match stays open (no transaction is sent for it).
        """
        with self._round_lock:
            started = time.perf_counter()
            if self.store.rounds_in(RoundState.CLEARED, RoundState.SUBMITTED) or self.store.closed_uncleared_rounds():
                self._finish_unfinished()  # an earlier round's submission failed: finish it first
            self.chain.cache.invalidate()  # the round judges deadlines and funds by fresh chain state
            horizon = self._settle_horizon()
            with self._intake_lock.exclusive():
                round_id = self.store.open_round()
                orders = self.store.open_messages(MessageKind.ORDER, horizon)
                bids = self.store.open_messages(MessageKind.BID, horizon)
                self.store.close_intake(round_id)
                self._intake_round = self.store.open_round()
            report = self._settle_snapshot(round_id, orders, bids, started)
            if report.state == RoundState.OPEN.value:
                with self._intake_lock.exclusive():
                    self.store.reopen_intake(round_id)
                    self._intake_round = self.store.open_round()
            return report

    def _settle_snapshot(
        self, round_id: int, orders: list[StoredMessage], bids: list[StoredMessage], started: float | None = None
    ) -> RoundReport:
        """Clears a round's snapshot and settles it. While nothing of the round has landed, any
        message the chain refuses is dropped and the round cleared again from the rest."""
        started = time.perf_counter() if started is None else started
        orders, bids = self._without_cancel_requests(orders, bids)
        t_snapshot = time.perf_counter()
        dropped_total = 0
        for _ in range(len(orders) + len(bids) + 1):
            clearing, dropped = self._clear_fundable(orders, bids)
            dropped_total += dropped
            live = self.store.stored_digests([s.digest for s in orders + bids], only_open=True)
            orders = [s for s in orders if s.digest in live]
            bids = [s for s in bids if s.digest in live]
            t_clear = time.perf_counter()
            if not clearing.matches:
                return RoundReport(round_id, RoundState.OPEN.value, len(orders), len(bids), dropped=dropped_total)

            bid_price = {s.digest: s.message.price for s in bids}
            matches = [
                {"order": m.order_key, "bid": m.bid_key, "units": m.units, "market": mc.market}
                for mc in clearing.markets
                for m in mc.matches
            ]
            # Batches are cut from the matches sorted by (market, bid price ascending): if a later
            # batch of a split round never lands, the bids it leaves unused are the pricier ones
            # of their market, and no lease that did land can be a pricier witness against them.
            matches.sort(key=lambda m: (m["market"], bid_price[m["bid"]]))
            prices = dict(clearing.prices)
            block_gas_limit = retry_rpc(lambda: self.chain.w3.eth.get_block("latest")["gasLimit"])
            batches = split_batches(matches, prices, block_gas_limit)
            record = {
                "prices": {k: str(v) for k, v in prices.items()},
                "matches": matches,
                "priced_out_orders": [d for mc in clearing.markets for d in mc.dropped_orders],
            }
            self.store.record_clearing(round_id, record, batches)
            failpoints.hit("after_clearing")
            try:
                settled = self.submitter.settle_round(self.store.get_round(round_id))
            except NeedsReclear as exc:
                log.warning("round %s: clearing again: %s", round_id, exc.reason)
                if exc.culprit is not None:
                    self.store.drop(exc.culprit, f"dropped from round {round_id}: {exc.reason}")
                    dropped_total += 1
                self.store.reset_clearing(round_id)
                continue
            except SubmissionError as exc:
                # The round stays submitted; the next close_round reconciles it before clearing.
                log.error("round %s: submission failed: %s", round_id, exc)
                return RoundReport(round_id, RoundState.SUBMITTED.value, len(orders), len(bids), dropped=dropped_total)
            t_settle = time.perf_counter()
            report = RoundReport(
                round_id=round_id,
                state=RoundState.CONFIRMED.value,
                orders=len(orders),
                bids=len(bids),
                matches=sum(b.matches for b in settled),
                dropped=dropped_total,
                prices=prices,
                gas_used=sum(b.gas_used for b in settled),
                seconds={
                    "snapshot": round(t_snapshot - started, 4),
                    "clear": round(t_clear - t_snapshot, 4),
                    "settle": round(t_settle - t_clear, 4),
                },
            )
            log.info("round %s", json.dumps(report.__dict__, default=str))
            return report
        raise SubmissionError(f"round {round_id}: no settleable allocation after dropping every refused message")

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

    def _clear_fundable(self, orders: list[StoredMessage], bids: list[StoredMessage]) -> tuple[Clearing, int]:
        """Clears, then corrects for what the chain can no longer honour, and clears again.

        Checked with fresh (uncached) reads at one block: each matched message's remaining units
        on chain (a message partly filled elsewhere is capped to what is left, so it is still used
        up to its real capacity; a void one or one whose nonce another message took is dropped),
        its nonce's cancellation request and its signer's binding (dropped unless bound to this
        matcher with no change pending), each buyer's available escrow against its matched cost,
        and each provider's available stake against its matched collateral (the account's newest
        matched message is dropped). Returns the final clearing and how many messages were dropped.
        """
        by_digest = {s.digest: s for s in orders + bids}
        caps: dict[str, int] = {}
        dropped = 0
        while True:
            clearing = clear(
                [_order_lot(s, caps) for s in orders if s.digest in by_digest],
                [_bid_lot(s, caps) for s in bids if s.digest in by_digest],
            )
            corrections = self._unfundable(clearing, by_digest)
            if not corrections:
                return clearing, dropped
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
                order = by_digest[m.order_key].message
                cost[order.buyer] = cost.get(order.buyer, 0) + order_cost(m.units, mc.price, order.duration)
                bid = by_digest[m.bid_key].message
                units[bid.provider] = units.get(bid.provider, 0) + m.units
                used[m.order_key] = used.get(m.order_key, 0) + m.units
                used[m.bid_key] = used.get(m.bid_key, 0) + m.units
        if not used:
            return []
        signers = list(dict.fromkeys(by_digest[d].message.signer for d in used))
        keys: list[tuple] = [
            ("remaining", bytes.fromhex(d[2:]), by_digest[d].message.signer, by_digest[d].message.nonce, by_digest[d].total)
            for d in used
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
                corrections[digest] = (on_chain, f"only {on_chain} units left on chain (filled elsewhere, or nonce taken)")

        def newest(signer: str) -> str:  # the newest matched message of a signer is the one that overdrew it
            return max((d for d in used if by_digest[d].message.signer == signer), key=lambda d: by_digest[d].received_at)

        for buyer, need in cost.items():
            if escrow[buyer] < need:
                corrections.setdefault(newest(buyer), (0, f"buyer's available escrow {escrow[buyer]} is below the round's cost {need}"))
        for provider, n_units in units.items():
            if stake[provider] < n_units * self.chain.stake_per_unit:
                corrections.setdefault(
                    newest(provider), (0, f"provider's available stake {stake[provider]} does not cover {n_units} units")
                )
        return [(digest, left, reason) for digest, (left, reason) in corrections.items()]

    def round(self, round_id: int) -> StoredRound | None:
        return self.store.get_round(round_id)


def _order_lot(s: StoredMessage, caps: dict[str, int]) -> OrderLot:
    o = s.message
    units = min(s.remaining, caps.get(s.digest, s.remaining))
    return OrderLot(key=s.digest, market=o.market, units=units, duration=o.duration, max_price=o.max_price)


def _bid_lot(s: StoredMessage, caps: dict[str, int]) -> BidLot:
    b = s.message
    capacity = min(s.remaining, caps.get(s.digest, s.remaining))
    return BidLot(
        key=s.digest, market=b.market, provider=b.provider, capacity=capacity, price=b.price, max_duration=b.max_duration
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
        self._stop.set()
        self._thread.join(timeout=self.seconds + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.matcher.close_round()
            except Exception:  # noqa: BLE001 - a failed round is logged; the next one still runs
                log.exception("round failed")
