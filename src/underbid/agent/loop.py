"""The provider agent: one supervised loop that keeps a provider's leases heartbeated, its
payments claimed and its capacity offered.

Each `tick` reads the provider's leases and then takes three steps, each on its own schedule:

- heartbeat: once the oldest last heartbeat of a running lease is `heartbeat_every` old (half the
  protocol's interval by default, so a missed tick or a slow node still leaves the other half
  before the lease becomes reportable), every running lease is heartbeated in one transaction.
  Leases the contract skips (closed by their buyer a moment ago, ended) are reported with the reason.
- claim: every `claim_every`, whatever the running leases accrued; a lease past its end at once
  (its claim closes it and unlocks its collateral).
- bids: per offer, the units neither leased nor in an open bid are posted as one new bid
  (capped by the stake the matcher can still reserve); so a filled, expired, dropped or
  cancelled bid, or a lease that ended, is offered again.

A step that fails (a node that does not answer, a matcher that refuses, a revert) is reported with
its decoded reason and retried after a backoff that doubles up to `MAX_BACKOFF`; the other steps go
on. Times are the chain's (block timestamps), so the agent follows a devnet's time travel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx
import requests
from web3.exceptions import Web3Exception

from underbid.agent.config import AgentConfig, Offer
from underbid.client.posting import post_messages
from underbid.client.session import Client, Journal, LeaseView, MatcherClient, UnderbidError
from underbid.protocol.catalogue import market_label
from underbid.protocol.eip712 import Bid
from underbid.protocol.markets import market_id
from underbid.protocol.units import format_credits

#: the longest wait before a failed step is tried again, in wall-clock seconds
MAX_BACKOFF = 30.0

#: what a step can fail with and still be worth retrying: the node or the matcher being away or
#: refusing (ChainError and MatcherError are UnderbidErrors), or a transport error below them
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    UnderbidError, Web3Exception, requests.RequestException, httpx.HTTPError, OSError, TimeoutError,
)


class Step(StrEnum):
    LEASES = "leases"
    HEARTBEAT = "heartbeat"
    CLAIM = "claim"
    BIDS = "bids"


class EventKind(StrEnum):
    LEASE_STARTED = "lease started"
    LEASE_ENDED = "lease ended"
    HEARTBEAT = "heartbeat"
    SKIPPED = "skipped"
    FAULTY = "faulty"
    CLAIM = "claim"
    BID = "bid"
    STAKE_SHORT = "stake short"
    ERROR = "error"
    RECOVERED = "recovered"


@dataclass(frozen=True)
class AgentEvent:
    """Something the agent did or saw, with a line for people and fields for scripts."""

    kind: EventKind
    text: str
    step: Step
    at: int  # chain time
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"event": self.kind.value, "step": self.step.value, "at": self.at, "text": self.text, **self.data}


@dataclass
class Backoff:
    """When a failed step may run again (wall clock): 1 s, 2 s, 4 s … up to MAX_BACKOFF."""

    failures: int = 0
    retry_at: float = 0.0
    last_error: str | None = None

    def ready(self, now: float) -> bool:
        return now >= self.retry_at

    def failed(self, now: float, error: str) -> float:
        delay = min(2.0**self.failures, MAX_BACKOFF)
        self.failures += 1
        self.retry_at = now + delay
        self.last_error = error
        return delay

    def succeeded(self) -> bool:
        """Resets; True if the step had been failing."""
        was_failing = self.failures > 0
        self.failures, self.retry_at, self.last_error = 0, 0.0, None
        return was_failing


@dataclass(frozen=True)
class OfferStatus:
    """One offer's units right now: leased, in open bids, and missing from both."""

    offer: Offer
    leased: int
    posted: int
    open_bids: int

    @property
    def label(self) -> str:
        return market_label(self.offer.market)

    @property
    def unoffered(self) -> int:
        return max(self.offer.capacity - self.leased - self.posted, 0)


@dataclass
class AgentStatus:
    """What a live display shows: the leases, each offer, and each step's last outcome."""

    now: int = 0
    leases: list[LeaseView] = field(default_factory=list)
    offers: list[OfferStatus] = field(default_factory=list)
    last_heartbeat: int | None = None
    last_claim: int | None = None
    claimed_total: int = 0
    errors: dict[Step, str] = field(default_factory=dict)
    ticks: int = 0


@dataclass(frozen=True)
class _OpenBid:
    digest: str
    remaining: int


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


class ProviderAgent:
    """Runs the provider's side of its leases and bids; `tick()` once per poll interval."""

    def __init__(self, client: Client, matcher: MatcherClient, journal: Journal, config: AgentConfig,
                 matcher_address: str, *, clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.matcher = matcher
        self.journal = journal
        self.config = config
        self.matcher_address = matcher_address
        self.me = client.address
        self.deployment = client.deployment_key()
        params = client.params()
        self.heartbeat_interval = int(params["heartbeatInterval"])
        self.heartbeat_every = config.heartbeat_every or max(self.heartbeat_interval // 2, 1)
        self.status = AgentStatus()
        self._clock = clock
        self._backoff = {step: Backoff() for step in Step}
        self._known: dict[str, str] = {}  # lease id -> last status seen
        self._first_read = True
        self._dead_bids: set[str] = set()  # digests that can never fill again (filled, expired, void)
        self._stake_note: str | None = None
        self._reported_faulty: set[str] = set()

    # ----- the loop -----

    def tick(self) -> list[AgentEvent]:
        """One pass: read the leases, then heartbeat, claim and re-bid as each is due."""
        events: list[AgentEvent] = []
        self.status.ticks += 1
        leases = self._attempt(Step.LEASES, self._read_leases, events)
        if leases is None:
            return events
        self._attempt(Step.HEARTBEAT, lambda sink: self._heartbeat(leases, sink), events)
        self._attempt(Step.CLAIM, lambda sink: self._claim(leases, sink), events)
        self._attempt(Step.BIDS, lambda sink: self._rebid(leases, sink), events)
        return events

    def _attempt(self, step: Step, action: Callable[[list[AgentEvent]], Any],
                 events: list[AgentEvent]) -> Any:
        """Runs one step unless it is backing off; a transient failure becomes an ERROR event."""
        backoff = self._backoff[step]
        wall = self._clock()
        if not backoff.ready(wall):
            return None
        try:
            result = action(events)
        except TRANSIENT_ERRORS as exc:
            reason = _reason(exc)
            delay = backoff.failed(wall, reason)
            self.status.errors[step] = reason
            events.append(AgentEvent(EventKind.ERROR, f"{step.value} failed: {reason} (retrying in {delay:.0f} s)",
                                     step, self.status.now, {"error": reason, "retry_in": delay}))
            return None
        if backoff.succeeded():
            self.status.errors.pop(step, None)
            events.append(AgentEvent(EventKind.RECOVERED, f"{step.value} works again", step, self.status.now))
        return result

    # ----- leases -----

    def _read_leases(self, events: list[AgentEvent]) -> list[LeaseView]:
        now = self.client.block_time()
        leases = self.client.leases(provider=self.me)
        self.status.now = now
        self.status.leases = [v for v in leases if not v.closed]
        for view in leases:
            before = self._known.get(view.id)
            state = "closed" if view.closed else view.status
            self._known[view.id] = state
            if self._first_read or before == state:
                continue
            if before is None and not view.closed:
                events.append(AgentEvent(
                    EventKind.LEASE_STARTED,
                    f"lease {view.id[:12]} started: {view.units} unit(s) of {self._label(view.market)}"
                    f" at {format_credits(view.price)} UBC/unit-hour until {_utc(view.end)}",
                    Step.LEASES, now, {"lease": view.id, "units": view.units, "end": view.end}))
            elif view.closed and before != "closed" and before is not None:
                reason = view.end_reason
                events.append(AgentEvent(
                    EventKind.LEASE_ENDED, f"lease {view.id[:12]} ended: {reason.value if reason else 'closed'}",
                    Step.LEASES, now, {"lease": view.id, "reason": reason.value if reason else None}))
        self._first_read = False
        return leases

    def _label(self, market: str) -> str:
        for offer in self.config.offers:
            if market_id(offer.market) == market:
                return market_label(offer.market)
        return f"market {market[:10]}…"

    def _heartbeat(self, leases: list[LeaseView], events: list[AgentEvent]) -> None:
        now = self.status.now
        for view in leases:
            # A missed heartbeat cannot be repaired: say so once, so the provider knows why.
            if view.status == "faulty" and view.id not in self._reported_faulty:
                self._reported_faulty.add(view.id)
                events.append(AgentEvent(
                    EventKind.FAULTY, f"lease {view.id[:12]} missed its heartbeat and can be reported;"
                    " a heartbeat no longer helps", Step.HEARTBEAT, now, {"lease": view.id}))
        running = [v for v in leases if v.active]
        if not running or now - min(v.last_heartbeat for v in running) < self.heartbeat_every:
            return
        result = self.client.heartbeat([v.id for v in running])
        self.status.last_heartbeat = result["at"]
        due = min(result["at"] + self.heartbeat_interval, min(v.end for v in running))
        events.append(AgentEvent(
            EventKind.HEARTBEAT, f"heartbeat for {len(result['leases'])} lease(s); next due by {_utc(due)}",
            Step.HEARTBEAT, now, {"leases": result["leases"], "tx": result["tx"]}))
        for skipped in result["skipped"]:
            events.append(AgentEvent(
                EventKind.SKIPPED, f"lease {skipped['lease'][:12]} skipped: {skipped['reason']}",
                Step.HEARTBEAT, now, {"lease": skipped["lease"], "reason": skipped["reason"]}))

    def _claim(self, leases: list[LeaseView], events: list[AgentEvent]) -> None:
        now = self.status.now
        ended = [v for v in leases if not v.closed and v.status == "ended"]
        scheduled = self.status.last_claim is None or now - self.status.last_claim >= self.config.claim_every
        accrued = [v for v in leases if not v.closed and v.status == "running" and v.claimable > 0]
        targets = ended + (accrued if scheduled else [])
        if not targets:
            if scheduled:
                self.status.last_claim = now
            return
        result = self.client.claim([v.id for v in targets])
        self.status.last_claim = now
        self.status.claimed_total += result["claimed"]
        closed = f", closed {len(result['closed'])} ended lease(s)" if result["closed"] else ""
        events.append(AgentEvent(
            EventKind.CLAIM, f"claimed {format_credits(result['claimed'])} UBC from {len(targets)} lease(s){closed}",
            Step.CLAIM, now, {"claimed": str(result["claimed"]), "closed": result["closed"], "tx": result["tx"]}))

    # ----- bids -----

    def _open_bids(self, now: int) -> dict[str, list[_OpenBid]]:
        """This provider's bids that can still fill, by market: journalled, for this matcher, not
        expired, dropped, cancelled nor used up."""
        found: dict[str, list[_OpenBid]] = {}
        for entry in self.journal.entries(self.deployment, signer=self.me, kind="bid"):
            if entry.digest in self._dead_bids:
                continue
            bid = entry.model()
            if not isinstance(bid, Bid) or bid.matcher.lower() != self.matcher_address.lower():
                continue
            if bid.deadline <= now or self.client.nonce_state(self.me, bid.nonce) in ("cancelled", "cancelling"):
                self._dead_bids.add(entry.digest)
                continue
            remaining = int(self.client.settlement.functions.remainingOf(
                bytes.fromhex(entry.digest[2:]), self.me, bid.nonce, bid.capacity).call())
            stored = self.matcher.get_message("bid", entry.digest)
            if remaining == 0 or stored is None or stored.get("status") == "dropped":
                self._dead_bids.add(entry.digest)
                continue
            found.setdefault(bid.market, []).append(_OpenBid(entry.digest, remaining))
        return found

    def _rebid(self, leases: list[LeaseView], events: list[AgentEvent]) -> None:
        now = self.status.now
        open_bids = self._open_bids(now)
        statuses = self._offer_statuses(leases, open_bids)
        if any(status.unoffered > 0 for status in statuses):
            # The tick's leases were read before the bids: a settlement mined in between moves units
            # out of the bids (read after it) into leases (read before it), so they look unoffered and
            # would be offered twice. Leases read after the bids can count a unit twice instead, which
            # only delays an offer to the next pass.
            leases = self.client.leases(provider=self.me)
            statuses = self._offer_statuses(leases, open_bids)
        self.status.offers = statuses
        wanted = [status for status in statuses if status.unoffered > 0]
        if not wanted:
            return
        info = self.client.provider(self.me)
        reserved = sum(bid.remaining for bids in open_bids.values() for bid in bids)
        stakeable = max(info.available // self.client.stake_per_unit - reserved, 0)
        short = []
        for index, status in enumerate(statuses):
            if status.unoffered == 0:
                continue
            units = min(status.unoffered, stakeable)
            if units < status.unoffered:
                short.append(f"{status.unoffered - units} unit(s) of {status.label}")
            if units == 0:
                continue
            stakeable -= units
            posted_bid = self._post(status.offer, units, now)
            statuses[index] = OfferStatus(status.offer, status.leased, status.posted + units, status.open_bids + 1)
            events.append(AgentEvent(
                EventKind.BID, f"bid {units} unit(s) of {status.label} at {format_credits(status.offer.price)}"
                f" UBC/unit-hour, open until {_utc(now + status.offer.valid)}", Step.BIDS, now,
                {"digest": posted_bid, "units": units, "market": status.offer.market}))
        self.status.offers = statuses
        note = ("the stake covers no more units: " + ", ".join(short) + " not offered"
                " (`underbid provider stake --amount <UBT>`)") if short else None
        if note and note != self._stake_note:
            events.append(AgentEvent(EventKind.STAKE_SHORT, note, Step.BIDS, now))
        self._stake_note = note

    def _offer_statuses(self, leases: list[LeaseView], open_bids: dict[str, list[_OpenBid]]) -> list[OfferStatus]:
        """Each offer's units: leased (running leases), posted (open bids' remaining) and the rest."""
        statuses = []
        for offer in self.config.offers:
            market = market_id(offer.market)
            leased = sum(v.units for v in leases if v.market == market and v.active)
            posted = sum(bid.remaining for bid in open_bids.get(market, []))
            statuses.append(OfferStatus(offer, leased, posted, len(open_bids.get(market, []))))
        return statuses

    def _post(self, offer: Offer, units: int, now: int) -> str:
        bid = Bid(provider=self.me, matcher=self.matcher_address, market=market_id(offer.market), capacity=units,
                  price=offer.price, max_duration=offer.max_duration, deadline=now + offer.valid,
                  nonce=self.client.next_nonce(self.journal, self.deployment))
        [posted] = post_messages(self.client, self.matcher, self.journal, [bid], offer.market)
        return posted.digest


def _utc(timestamp: int) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(timestamp))
