"""The market explorer: a read-only page the matcher serves at `GET /explorer`, and the JSON it reads.

`/explorer/api/*` (in the OpenAPI schema) answers markets with short labels, clearing prices per
round, the last round's supply and demand steps, recent leases, provider uptime, and the matcher's
bond and challenges. The page draws them with Chart.js, served from the package (no CDN).

Reads never stall intake or a round close: the store is read through its per-thread WAL readers
(which never wait for the writer) and no matcher lock is taken; the chain is read through a
connection of the explorer's own (`underbid.client.session.Client`, short timeout), and every
answer is cached for a few seconds and refreshed by one request at a time while the others are
served the previous answer.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Generic, Literal, TypeVar, cast

import requests
from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from web3 import Web3

from underbid.chain.view import RPC_TIMEOUT
from underbid.client.session import Client, UnderbidError
from underbid.matcher.api import _COMMON, _error, _errors
from underbid.matcher.rounds import Matcher
from underbid.matcher.store import BatchState, MessageKind, RoundState, StoredMessage, StoredRound
from underbid.protocol import catalogue
from underbid.protocol.eip712 import BYTES32_PATTERN
from underbid.protocol.pricing import PriceRule, explain_price, known_rule
from underbid.protocol.units import format_credits, format_ubt

STATIC = Path(__file__).parent / "static"

T = TypeVar("T")

MarketId = Annotated[str, Query(pattern=BYTES32_PATTERN, description="market id, 0x + 64 hex digits")]
Rounds = Annotated[int, Query(ge=1, le=1000, description="at most this many of the latest rounds")]
#: Leases (the latest) the page lists.
LATEST_LEASES = 50
Leases = Annotated[int, Query(ge=1, le=LATEST_LEASES, description="at most this many of the latest leases")]

#: Seconds an answer is reused: the page polls every few seconds, and many viewers share one read.
STORE_TTL = 1.0
CHAIN_TTL = 3.0
#: The provider uptime counts the heartbeats and faults of the latest this many leases.
UPTIME_LEASES = 500


def market_label(spec: str | None, market: str) -> str:
    """A short label for a market: `H100 80GB ×8 · us-east`, or the id shortened when no spec is known."""
    if not spec:
        return f"{market[:8]}…{market[-4:]}"
    return catalogue.market_label(spec)


class Cached(Generic[T]):
    """One value loaded at most every `ttl` seconds, by one caller at a time: while a load runs,
    the others get the previous value at once (only the very first load is waited for)."""

    def __init__(self, ttl: float, load: Callable[[], T]):
        self.ttl = ttl
        self._load = load
        self._lock = threading.Lock()
        self._value: T | None = None
        self._loaded_at = float("-inf")

    def get(self) -> T:
        if self._value is not None and time.monotonic() - self._loaded_at < self.ttl:
            return self._value
        if not self._lock.acquire(blocking=self._value is None):
            assert self._value is not None
            return self._value
        try:
            if self._value is None or time.monotonic() - self._loaded_at >= self.ttl:
                started = time.monotonic()
                self._value = self._load()
                self._loaded_at = started
            return self._value
        finally:
            self._lock.release()


# ----- the JSON the page reads -----


class ExplorerMarket(BaseModel):
    market: str = Field(description="market id")
    label: str = Field(description="short label, e.g. `H100 80GB ×8 · us-east`")
    spec: str | None = Field(description="canonical spec string, when a message named it")
    open_orders: int
    open_bids: int
    rounds_traded: int = Field(description="confirmed rounds with a clearing price in this market")
    last_round: int | None
    last_price: str | None = Field(description="last clearing price, UBC per unit-hour (decimal string)")
    last_price_reason: str | None = Field(default=None, description="the last price with the reason for it")


class PricePoint(BaseModel):
    round: int
    price: str = Field(description="clearing price, UBC per unit-hour (decimal string)")
    cleared_at: float | None = Field(description="unix time the round was cleared")
    rule: PriceRule | None = Field(default=None, description="what set the price (null: a round recorded before"
                                   " rules were)")
    reason: str = Field(default="", description='the price with its reason: "2.1 = the cheapest bid left unused …"')


class PriceHistory(BaseModel):
    market: str
    label: str
    points: list[PricePoint] = Field(description="one per confirmed round that traded in the market, oldest first")


class Step(BaseModel):
    price: str = Field(description="UBC per unit-hour (decimal string)")
    units: int = Field(description="units offered (supply) or asked for (demand) at this price")
    cumulative: int = Field(description="units at this price or better, this step included")


class BookCurves(BaseModel):
    """The last confirmed round of a market: its bids as a supply curve (cheapest first) and its orders
    as a demand curve (highest max price first), rebuilt from the store: every message taken up to
    that round that traded in it, or is still open and unexpired (left unused by it)."""

    market: str
    label: str
    round: int
    price: str = Field(description="the round's clearing price in this market")
    supply: list[Step]
    demand: list[Step]


#: `LeaseView.status`'s values (a str there).
LeaseStatus = Literal["running", "ended", "faulty", "closed", "faulted"]


class ExplorerLease(BaseModel):
    id: str
    round: int
    market: str
    label: str
    buyer: str
    provider: str
    units: int
    price: str = Field(description="UBC per unit-hour (decimal string)")
    start: int
    end: int
    last_heartbeat: int
    status: LeaseStatus = Field(
        description="running; ended (past its end); faulty (a heartbeat is overdue: reportable); closed; faulted"
        " (closed by a fault report)"
    )


class ProviderUptime(BaseModel):
    provider: str
    leases: int = Field(description="leases opened (among the latest leases read)")
    heartbeats: int = Field(description="heartbeats sent on those leases")
    faults: int = Field(description="fault reports against those leases")
    missed: int = Field(description="leases among the latest listed whose heartbeat is overdue (reportable, not"
                        " reported yet)")
    uptime: float = Field(ge=0, le=1, description="share of those leases with neither a fault report nor an overdue"
                          " heartbeat")


class Challenge(BaseModel):
    round: int
    bid: str = Field(description="digest of the bid the challenger proved was passed over")
    challenger: str
    slashed: str = Field(description="UBT slashed from the matcher's bond (decimal string)")


class MatcherStanding(BaseModel):
    matcher: str
    bond: str = Field(description="UBT bonded (decimal string)")
    min_bond: str
    bonded: bool = Field(description="may settle now")
    exiting: bool
    challenges: list[Challenge]


class ChainFacts(BaseModel):
    """What the page shows from the chain, read together."""

    leases: list[ExplorerLease]
    providers: list[ProviderUptime]
    matcher: MatcherStanding


@dataclass(frozen=True)
class StoreFacts:
    """What the page shows from the store, read together."""

    markets: list[ExplorerMarket]
    history: dict[str, PriceHistory]
    rounds: dict[int, StoredRound]  # the confirmed rounds, by id


# ----- reading -----


class Explorer:
    """The explorer's reads over one matcher's store and chain."""

    def __init__(self, matcher: Matcher):
        self.matcher = matcher
        self._client: Client | None = None
        self.store_facts = Cached(STORE_TTL, self._read_store)
        self.chain_facts = Cached(CHAIN_TTL, self._read_chain)
        #: market -> its cached curves; only markets a confirmed round traded in get an entry.
        self._books: dict[str, Cached[BookCurves]] = {}
        self._books_lock = threading.Lock()

    def _read_store(self) -> StoreFacts:
        store = self.matcher.store
        rounds = {r.id: r for r in store.rounds_in(RoundState.CONFIRMED)}
        now = self.matcher.chain.block_time()
        specs: dict[str, str | None] = {}
        counts: dict[str, tuple[int, int]] = {}
        for row in store.market_summary(now):
            specs[row["market"]] = row["spec"]
            counts[row["market"]] = (int(row["open_orders"] or 0), int(row["open_bids"] or 0))
        points: dict[str, list[PricePoint]] = defaultdict(list)
        for stored in sorted(rounds.values(), key=lambda r: r.id):
            rules = (stored.clearing or {}).get("price_rules", {})
            for market, price in (stored.clearing or {}).get("prices", {}).items():
                rule = known_rule(rules.get(market))
                points[market].append(PricePoint(round=stored.id, price=format_credits(int(price)),
                                                 cleared_at=stored.cleared_at, rule=rule,
                                                 reason=explain_price(int(price), rule)))
        history = {
            market: PriceHistory(market=market, label=market_label(specs.get(market), market), points=series)
            for market, series in points.items()
        }
        markets = [
            ExplorerMarket(
                market=market,
                label=market_label(specs.get(market), market),
                spec=specs.get(market),
                open_orders=counts.get(market, (0, 0))[0],
                open_bids=counts.get(market, (0, 0))[1],
                rounds_traded=len(points.get(market, [])),
                last_round=points[market][-1].round if points.get(market) else None,
                last_price=points[market][-1].price if points.get(market) else None,
                last_price_reason=points[market][-1].reason if points.get(market) else None,
            )
            for market in sorted(set(specs) | set(points))
        ]
        return StoreFacts(markets=markets, history=history, rounds=rounds)

    def book(self, market: str) -> BookCurves | None:
        """The supply and demand steps of the last confirmed round that traded in `market` (cached)."""
        if market not in self.store_facts.get().history:
            return None
        with self._books_lock:
            cached = self._books.setdefault(market, Cached(STORE_TTL, lambda: self._read_book(market)))
        return cached.get()

    def _read_book(self, market: str) -> BookCurves:
        facts = self.store_facts.get()
        history = facts.history[market]
        last = history.points[-1]
        stored = facts.rounds[last.round]
        traded: Counter[str] = Counter()
        for batch in stored.batches:
            if batch.state is BatchState.MINED:
                for match in batch.payload.matches:
                    if match.market == market:
                        traded[match.order] += match.units
                        traded[match.bid] += match.units
        now = self.matcher.chain.block_time()
        supply: list[tuple[int, int]] = []
        demand: list[tuple[int, int]] = []
        for message in self.matcher.store.market_book(market, last.round):
            units = _units_at_round(message, traded[message.digest], now)
            if units <= 0:
                continue
            if message.kind is MessageKind.BID:
                supply.append((message.bid.price, units))
            else:
                demand.append((message.order.max_price, units))
        return BookCurves(
            market=market, label=history.label, round=last.round, price=last.price,
            supply=_steps(sorted(supply)), demand=_steps(sorted(demand, reverse=True)),
        )

    def _chain(self) -> Client:
        if self._client is None:
            chain = self.matcher.chain
            rpc = str(getattr(chain.w3.provider, "endpoint_uri", ""))
            self._client = Client(rpc, chain.book, timeout=RPC_TIMEOUT)
        return self._client

    def _read_chain(self) -> ChainFacts:
        client = self._chain()
        specs = {m.market: m.spec for m in self.store_facts.get().markets}
        events = client.lease_events()[-UPTIME_LEASES:]
        faulted = client.faulted_leases()
        heartbeats = Counter(
            "0x" + bytes(log["args"]["leaseId"]).hex()
            for log in client.settlement.events.Heartbeat.get_logs(from_block=client.book.block)
        )
        now = client.block_time()
        leases = []
        for event in reversed(events[-LATEST_LEASES:]):
            view = client.lease(bytes(event["leaseId"]), event, now=now, faulted=faulted)
            leases.append(ExplorerLease(
                id=view.id, round=view.round, market=view.market,
                label=market_label(specs.get(view.market), view.market),
                buyer=view.buyer, provider=view.provider, units=view.units, price=format_credits(view.price),
                start=view.start, end=view.end, last_heartbeat=view.last_heartbeat,
                status=cast(LeaseStatus, view.status),  # pydantic checks it is one of them
            ))
        # Overdue heartbeats are known only for the leases whose live state was read (the listed ones).
        overdue = {lease.id for lease in leases if lease.status == "faulty"}
        by_provider: dict[str, list[str]] = defaultdict(list)
        for event in events:
            by_provider[Web3.to_checksum_address(event["provider"])].append("0x" + bytes(event["leaseId"]).hex())
        providers = [
            ProviderUptime(
                provider=provider,
                leases=len(ids),
                heartbeats=sum(heartbeats[i] for i in ids),
                faults=sum(i in faulted for i in ids),
                missed=sum(i in overdue for i in ids),
                uptime=round(1 - sum(i in faulted or i in overdue for i in ids) / len(ids), 4),
            )
            for provider, ids in sorted(by_provider.items())
        ]
        return ChainFacts(leases=leases, providers=providers, matcher=self._standing(client))

    def _standing(self, client: Client) -> MatcherStanding:
        address = self.matcher.address
        bond = client.matcher_bond(address)
        court = client.court if client.court is not None else client.settlement
        logs = court.events.MatcherSlashed.get_logs(from_block=client.book.block,
                                                    argument_filters={"matcher": address})
        challenges = [
            Challenge(round=int(log["args"]["round"]), bid="0x" + bytes(log["args"]["bidDigest"]).hex(),
                      challenger=str(log["args"]["challenger"]), slashed=format_ubt(int(log["args"]["slashed"])))
            for log in logs
        ]
        return MatcherStanding(
            matcher=address, bond=format_ubt(bond["bond"]), min_bond=format_ubt(bond["min_bond"]),
            bonded=bool(bond["bonded"]), exiting=bool(bond["exiting"]), challenges=challenges,
        )



def _units_at_round(message: StoredMessage, traded: int, now: int) -> int:
    """Units `message` had left when the last round cleared: what it has left now plus what that
    round filled (a message filled before the round, or expired since, counts none)."""
    if traded:
        return message.remaining + traded
    if message.status != "open" or message.message.deadline < now:
        return 0
    return message.remaining


def _steps(levels: list[tuple[int, int]]) -> list[Step]:
    """(price, units) levels in curve order -> steps, equal prices merged, with cumulative units."""
    steps: list[Step] = []
    cumulative = 0
    for price, units in levels:
        cumulative += units
        shown = format_credits(price)
        if steps and steps[-1].price == shown:
            steps[-1] = Step(price=shown, units=steps[-1].units + units, cumulative=cumulative)
        else:
            steps.append(Step(price=shown, units=units, cumulative=cumulative))
    return steps


# ----- the routes -----


def mount_explorer(app: FastAPI, matcher: Matcher) -> None:
    """Serves the explorer page at `/explorer`, its assets at `/explorer/static`, its JSON at `/explorer/api`."""
    explorer = Explorer(matcher)
    router = APIRouter(prefix="/explorer", tags=["explorer"])

    def chain_facts() -> ChainFacts | JSONResponse:
        try:
            return explorer.chain_facts.get()
        except (UnderbidError, ConnectionError, requests.RequestException) as exc:
            return _error(503, "chain", f"the explorer could not read the chain ({type(exc).__name__}): try again")

    @router.get("", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "explorer.html", media_type="text/html")

    @router.get("/api/markets", response_model=list[ExplorerMarket], responses=_errors(*_COMMON))
    def markets() -> list[ExplorerMarket]:
        """Every market the matcher has seen, with its label, open messages and last clearing price."""
        return explorer.store_facts.get().markets

    @router.get("/api/prices", response_model=PriceHistory, responses=_errors(404, 422, *_COMMON))
    def prices(market: MarketId, rounds: Rounds = 100) -> PriceHistory | JSONResponse:
        """A market's clearing price in each confirmed round that traded in it (the latest `rounds`)."""
        history = explorer.store_facts.get().history.get(market.lower())
        if history is None:
            return _error(404, "market", f"no confirmed round traded in market {market}")
        return history.model_copy(update={"points": history.points[-rounds:]})

    @router.get("/api/book", response_model=BookCurves, responses=_errors(404, 422, *_COMMON))
    def book(market: MarketId) -> BookCurves | JSONResponse:
        """The supply and demand steps of the market's last confirmed round, and its clearing price."""
        curves = explorer.book(market.lower())
        if curves is None:
            return _error(404, "market", f"no confirmed round traded in market {market}")
        return curves

    @router.get("/api/leases", response_model=list[ExplorerLease], responses=_errors(422, *_COMMON))
    def leases(limit: Leases = 20) -> list[ExplorerLease] | JSONResponse:
        """The latest leases opened on chain, the newest first, with their live status."""
        facts = chain_facts()
        return facts if isinstance(facts, JSONResponse) else facts.leases[:limit]

    @router.get("/api/providers", response_model=list[ProviderUptime], responses=_errors(*_COMMON))
    def providers() -> list[ProviderUptime] | JSONResponse:
        """Each provider's leases, heartbeats, fault reports and uptime, from the chain's events."""
        facts = chain_facts()
        return facts if isinstance(facts, JSONResponse) else facts.providers

    @router.get("/api/matcher", response_model=MatcherStanding, responses=_errors(*_COMMON))
    def standing() -> MatcherStanding | JSONResponse:
        """This matcher's bond and the challenges that slashed it."""
        facts = chain_facts()
        return facts if isinstance(facts, JSONResponse) else facts.matcher

    app.include_router(router)
    app.mount("/explorer/static", StaticFiles(directory=STATIC), name="explorer-static")
