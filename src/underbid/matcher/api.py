"""The matcher's HTTP JSON API (FastAPI; the OpenAPI schema is served at /openapi.json).

Every error is a 4xx, or a 503 naming `chain`, with the same body naming the field at fault and
the reason: `{"detail": [{"field": "deadline", "reason": "expired: ..."}]}`. Every hex and integer
field is checked against the exact pattern and range the schema states (addresses, bytes32, 65-byte
signatures, uint32/uint64/uint256), so nothing accepted can later be refused by the ABI encoder.
Bodies above `MAX_BODY_BYTES` are refused (413, `body`) before they are read. `POST /rounds/close`
answers 202 at once and closes the round in the background, one close at a time; the round is
polled at `GET /rounds/{id}`.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import requests
from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from underbid.chain.view import ChainReadError
from underbid.matcher.leadership import IntakeLockUnavailable
from underbid.matcher.rounds import Matcher
from underbid.matcher.store import MessageKind, StoredMessage
from underbid.matcher.validation import MAX_SPEC_LENGTH, Accepted, Rejection, Rejections, Submission
from underbid.protocol.eip712 import (
    ADDRESS_PATTERN,
    BYTES32_PATTERN,
    SIGNATURE_PATTERN,
    Address,
    Bid,
    Bytes32,
    Order,
    Uint64,
    checksum,
)
from underbid.protocol.pricing import NoMatch, PriceRule, explain_price, known_rule

log = logging.getLogger("underbid.matcher.api")

Digest = Annotated[str, Path(pattern=BYTES32_PATTERN, description="EIP-712 digest, 0x + 64 hex digits")]
Signer = Annotated[str, Query(pattern=ADDRESS_PATTERN, description="the buyer's or provider's address")]
Status = Annotated[Literal["open", "filled", "dropped"] | None, Query(description="only messages in this state")]
Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many messages")]
Offset = Annotated[int, Query(ge=0, lt=2**63, description="skip this many (the oldest first)")]


#: The largest request body read (413 naming `body` above it, before it is read): a batch of
#: 1,000 bids with specs is about 0.8 MB.
MAX_BODY_BYTES = 1 << 20

SignatureHex = Annotated[
    str,
    Field(
        pattern=SIGNATURE_PATTERN,
        json_schema_extra={"format": "signature"},
        description="65-byte (r, s, v) signature: 0x + 130 hex digits",
        examples=["0x" + "ab" * 65],
    ),
]


class _Signed(BaseModel):
    signature: SignatureHex
    spec: str | None = Field(
        default=None,
        max_length=MAX_SPEC_LENGTH,
        pattern=r"^[ -~]*$",
        description="Optional market spec string (printable ASCII; numbers of at most 9 digits);"
        " if given it must hash to `market`.",
    )


class OrderSubmission(Order, _Signed):
    """An order's EIP-712 fields plus its signature."""


class BidSubmission(Bid, _Signed):
    """A bid's EIP-712 fields plus its signature."""


#: Most messages one batch request may carry; a price ladder is a handful, a fleet a few hundred.
MAX_BATCH = 1_000


class OrderBatch(BaseModel):
    """Signed orders accepted together or not at all."""

    orders: list[OrderSubmission] = Field(min_length=1, max_length=MAX_BATCH)


class BidBatch(BaseModel):
    """Signed bids accepted together or not at all: a provider's price ladder, or a fleet's bids."""

    bids: list[BidSubmission] = Field(min_length=1, max_length=MAX_BATCH)


class SignedReceipt(BaseModel):
    """The matcher's EIP-712 receipt for a bid: the provider's proof that it was submitted.

    `Receipt{matcher, bidHash, round, issuedAt}` signed by the matcher's key (its receipt signer
    on chain); `issuedAt` is the timestamp of the block at which the provider's stake was read.
    """

    matcher: Address
    bidHash: Bytes32
    round: Uint64
    issuedAt: Uint64
    signature: SignatureHex


class Acknowledgement(BaseModel):
    digest: Bytes32
    status: Literal["open"]
    receipt: SignedReceipt | None = None


class BatchAcknowledgement(BaseModel):
    accepted: list[Acknowledgement]


class UnmatchedView(BaseModel):
    """Why the last round that left an order (partly) unmatched did so."""

    round: int = Field(ge=0, description="the round")
    reason: NoMatch = Field(description="no bids; duration too long; max price too low; priced out;"
                            " too few units offered; outbid")
    detail: str = Field(description="the reason for people, with the figures that decided it")
    matched: int = Field(ge=0, description="units that round matched")
    wanted: int = Field(ge=0, description="units the order still wanted in that round")
    line: str = Field(description="one line for people: the units, the round and the reason")


class MessageView(BaseModel):
    """A stored order or bid, as any machine can look it up."""

    kind: Literal["order", "bid"]
    digest: Bytes32
    message: dict[str, Any] = Field(description="the signed EIP-712 fields (an Order or a Bid), camelCase")
    signature: SignatureHex
    filled: int = Field(ge=0)
    remaining: int = Field(ge=0)
    status: str = Field(description="open, filled or dropped")
    reason: str | None = Field(description="why the message was dropped")
    receipt: SignedReceipt | None = Field(description="a bid's receipt; null for orders")
    unmatched: UnmatchedView | None = Field(
        default=None, description="an order's last 'why no match': null for bids, for orders no round has passed"
        " over yet, and for orders the last round served in full")


class MarketView(BaseModel):
    market: Bytes32
    spec: str | None
    open_orders: int | None
    open_bids: int | None
    last_round: int | None
    last_price: int | None
    last_price_rule: PriceRule | None = Field(default=None, description="what set the last price")
    last_price_reason: str | None = Field(default=None, description="the last price with its reason, for people")


class BatchView(BaseModel):
    batch: int
    state: str
    tx_hash: str | None
    gas_used: int | None
    matches: int
    reason: str | None = None


class RoundReportView(BaseModel):
    """What closing a round did (`state` "open": nothing to match, the round stays open)."""

    model_config = ConfigDict(extra="allow")

    round_id: int | None
    state: str
    orders: int = 0
    bids: int = 0
    matches: int = 0
    dropped: int = 0
    prices: dict[str, int] | None = None
    gas_used: int | None = 0
    price_rules: dict[str, PriceRule] | None = Field(default=None, description="market -> what set its price")
    price_reasons: dict[str, str] | None = Field(
        default=None, description='market -> its price with the reason, e.g. "2.1 = the cheapest bid left unused …"')


class CloseStatus(BaseModel):
    """A close asked for through `POST /rounds/close`, as the matcher process remembers it.

    `running` until the close ends; then `done` (with its report) or `failed` (with the error:
    the round stays in the store as far as it got, and the next close or restart finishes it), or
    `superseded` when the round timer closed this round first."""

    status: Literal["running", "done", "failed", "superseded"]
    requested_at: float
    finished_at: float | None = None
    report: RoundReportView | None = None
    error: str | None = None


class RoundView(BaseModel):
    id: int
    state: str
    opened_at: float | None
    cleared_at: float | None
    confirmed_at: float | None
    clearing: dict[str, Any] | None
    error: str | None
    batches: list[BatchView]
    close: CloseStatus | None = Field(default=None, description="the last close requested for this round, if any")


class CloseAccepted(BaseModel):
    round_id: int = Field(description="the round being closed")
    status: Literal["running", "done", "failed", "superseded"]
    poll: str = Field(description="where to poll the round: GET /rounds/{round_id}")


class Health(BaseModel):
    status: Literal["ok"]
    chain_id: int
    block: int
    settlement: Address
    matcher: Address
    open_round: int | None
    leader: bool = Field(description="whether this process leads: closes rounds and submits settlements (a"
                         " follower on a shared Postgres store only takes messages and answers reads)")
    leadership: dict[str, Any] = Field(default_factory=dict, description="how the leader is chosen, and who it is")


class FieldError(BaseModel):
    field: str
    reason: str


class ErrorBody(BaseModel):
    detail: list[FieldError]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


#: The errors every endpoint may answer (503: the chain is unreachable), and those of a body.
_COMMON = (405, 413, 503)
_BODY = (400, 409, 413, 422)


def _error(status: int, field: str, reason: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": [{"field": field, "reason": reason}]})


def _batch_view(batch: Any) -> BatchView:
    tx = getattr(batch, "tx", None)
    payload = batch.payload
    matches = payload["matches"] if isinstance(payload, dict) else payload.matches
    return BatchView(
        batch=batch.batch,
        state=str(batch.state),
        tx_hash=tx.tx_hash if tx is not None else getattr(batch, "tx_hash", None),
        gas_used=batch.gas_used,
        matches=len(matches),
        reason=getattr(batch, "reason", None),
    )


def _message_view(stored: StoredMessage) -> dict[str, Any]:
    return {
        "kind": stored.kind.value,
        "digest": stored.digest,
        "message": stored.message.model_dump(by_alias=True),
        "signature": "0x" + stored.signature.hex(),
        "filled": stored.filled,
        "remaining": stored.remaining,
        "status": stored.status,
        "reason": stored.reason,
        "receipt": stored.receipt,
        "unmatched": None if stored.unmatched is None else {**dataclasses.asdict(stored.unmatched),
                                                            "line": stored.unmatched.line()},
    }


class BodyLimit:
    """ASGI middleware: refuses a request body above `max_bytes` with 413 naming `body`, by its
    Content-Length before reading anything, or as soon as a streamed body passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            too_big = _error(413, "body", f"the request body is limited to {self.max_bytes} bytes")
            too_big.headers["Connection"] = "close"
            await too_big(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(413, f"the request body is limited to {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


def _intake_round(matcher: Matcher) -> int | None:
    """The round taking messages (not `store.open_round()`, which may write)."""
    return matcher.intake_round()


def _report_dict(report: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        return dataclasses.asdict(report)
    return dict(report.__dict__)


class RoundCloser:
    """Runs `Matcher.close_round` in a background thread, one close at a time, and remembers how
    the last `MAX_REMEMBERED` closes ended (in memory: after a restart, reconcile finishes any
    interrupted round and `GET /rounds/{id}` shows its stored state).

    A close asked for while one runs joins it: the answer names the round already being closed.
    Whatever a close raises (a submission, RPC or solver error, a timeout) ends the close as
    `failed` with the error; it never reaches the HTTP layer as a 500.
    """

    MAX_REMEMBERED = 256

    def __init__(self, matcher: Matcher):
        self.matcher = matcher
        self._lock = threading.Lock()
        self._jobs: OrderedDict[int, CloseStatus] = OrderedDict()
        self._running: int | None = None

    def request(self) -> tuple[int, CloseStatus]:
        with self._lock:
            if self._running is not None:
                return self._running, self._jobs[self._running]
            round_id = _intake_round(self.matcher)
            if round_id is None:
                round_id = self.matcher.store.open_round()
            job = CloseStatus(status="running", requested_at=time.time())
            self._jobs[round_id] = job
            self._jobs.move_to_end(round_id)
            while len(self._jobs) > self.MAX_REMEMBERED:
                self._jobs.popitem(last=False)
            self._running = round_id
            threading.Thread(target=self._run, args=(round_id,), name=f"close-round-{round_id}", daemon=True).start()
            return round_id, job

    def status(self, round_id: int) -> CloseStatus | None:
        with self._lock:
            return self._jobs.get(round_id)

    def _run(self, round_id: int) -> None:
        update: dict[str, Any]
        try:
            if _intake_round(self.matcher) not in (None, round_id):
                # The round timer closed this round between the request and now: closing again
                # would close the next round, which nobody asked for.
                update = {"status": "superseded", "error": "the round timer closed this round first"}
            else:
                update = {"status": "done", "report": RoundReportView(**_report_dict(self.matcher.close_round()))}
        except Exception as exc:  # noqa: BLE001 - reported through GET /rounds/{id}, and logged
            log.exception("closing round %s failed", round_id)
            update = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
        with self._lock:
            job = self._jobs.get(round_id)
            if job is not None:
                self._jobs[round_id] = job.model_copy(update={**update, "finished_at": time.time()})
            self._running = None


#: Integer bounds the schema states (uint32/uint64/uint256 maxima, the page offset's bound).
_INTEGER_BOUNDS = (2**32 - 1, 2**63, 2**64 - 1, 2**256 - 1)


def _exact_integer_bounds(app: FastAPI) -> None:
    """FastAPI's OpenAPI models hold `minimum`/`maximum` as floats, which would state 2**64 as the
    largest uint64 (and round uint256's bound): the served schema gets the exact integers back."""
    generate = app.openapi

    def fix(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                value = node.get(key)
                if isinstance(value, float) and value.is_integer():
                    node[key] = next((b for b in _INTEGER_BOUNDS if float(b) == value), int(value))
            for child in node.values():
                fix(child)
        elif isinstance(node, list):
            for child in node:
                fix(child)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            fix(generate())  # generate() caches the schema in app.openapi_schema
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(matcher: Matcher, admin_token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The API over `matcher`. `POST /rounds/close` needs `Authorization: Bearer <admin_token>`."""
    app = FastAPI(
        title="Underbid matcher",
        version="0.1.0",
        description="Collects EIP-712 signed GPU orders and bids, clears reverse auctions, settles on chain.",
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    _exact_integer_bounds(app)
    closer = RoundCloser(matcher)
    app.state.closer = closer

    @app.exception_handler(Rejection)
    async def _rejection(_: Request, exc: Rejection) -> JSONResponse:
        return _error(exc.status, exc.field, exc.reason)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                details.append({"field": "body", "reason": f"not valid JSON: {err.get('ctx', {}).get('error', '')}"})
                continue
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "path", "query", "header")]
            details.append({"field": ".".join(loc) or "body", "reason": err.get("msg", "invalid")})
        return JSONResponse(status_code=422, content={"detail": details})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error(404, "path", f"no endpoint {request.url.path}")
        if exc.status_code == 405:
            response = _error(405, "method", f"{request.method} is not allowed on {request.url.path}")
            response.headers["Allow"] = _allowed(request) or (exc.headers or {}).get("Allow", "")
            return response
        if exc.status_code == 413:
            response = _error(413, "body", str(exc.detail))
            response.headers["Connection"] = "close"
            return response
        if exc.status_code == 400:  # the body could not be read or decoded at all
            return _error(422, "body", str(exc.detail))
        return _error(exc.status_code, "request", str(exc.detail))

    def _allowed(request: Request) -> str:
        """Every method some route serves at this path (Starlette names only the first route's)."""
        methods: set[str] = set()
        for route in app.routes:
            match, _ = route.matches({**request.scope, "method": "GET"})
            route_methods = getattr(route, "methods", None)
            if match is not Match.NONE and route_methods and getattr(route, "include_in_schema", True):
                methods |= set(route_methods)
        return ", ".join(sorted(methods))

    @app.exception_handler(ConnectionError)
    @app.exception_handler(requests.RequestException)  # what web3's HTTP provider raises
    async def _chain_down(_: Request, exc: Exception) -> JSONResponse:
        return _error(503, "chain", f"the chain RPC is unreachable ({type(exc).__name__}): try again shortly")

    @app.exception_handler(IntakeLockUnavailable)
    async def _store_busy(_: Request, exc: IntakeLockUnavailable) -> JSONResponse:
        return _error(503, "store", f"{exc}: try again shortly")

    # A Postgres store's pooled connection can die under a request (the server restarted, the
    # session was terminated, the pool timed out); the pool discards it, so a retry gets a fresh
    # one. psycopg is imported here so that a SQLite matcher never loads it.
    import psycopg

    @app.exception_handler(psycopg.OperationalError)  # PoolTimeout and AdminShutdown among them
    async def _store_unavailable(_: Request, exc: psycopg.OperationalError) -> JSONResponse:
        return _error(503, "store", f"the database did not answer ({type(exc).__name__}): try again shortly")

    @app.exception_handler(ChainReadError)
    async def _chain_refused(_: Request, exc: ChainReadError) -> JSONResponse:
        return _error(503, "chain", f"the chain RPC refused a read ({exc}): try again shortly")

    def _submissions(kind: MessageKind, bodies: Sequence[_Signed]) -> list[Submission]:
        model = Order if kind is MessageKind.ORDER else Bid
        fields = set(model.model_fields)
        return [
            Submission(model.model_validate(body.model_dump(include=fields)), body.signature, body.spec)
            for body in bodies
        ]

    def _acknowledgement(accepted: Accepted) -> Acknowledgement:
        receipt = None if accepted.receipt is None else SignedReceipt.model_validate(accepted.receipt)
        return Acknowledgement(digest=accepted.digest, status="open", receipt=receipt)

    def _submit(kind: MessageKind, body: _Signed) -> Acknowledgement:
        (submission,) = _submissions(kind, [body])
        return _acknowledgement(matcher.accept(kind, submission.message, submission.signature, submission.spec))

    def _submit_batch(kind: MessageKind, bodies: Sequence[_Signed]) -> BatchAcknowledgement | JSONResponse:
        try:
            accepted = matcher.accept_batch(kind, _submissions(kind, bodies))
        except Rejections as refused:
            # Field paths as for schema errors: "bids.3.nonce" is the nonce of the fourth bid.
            return JSONResponse(status_code=refused.status, content={"detail": [
                {"field": f"{kind.value}s.{i}.{rejection.field}", "reason": rejection.reason}
                for i, rejection in refused.items
            ]})
        return BatchAcknowledgement(accepted=[_acknowledgement(a) for a in accepted])

    @app.post("/orders", status_code=201, response_model=Acknowledgement, responses=_errors(*_BODY, *_COMMON))
    def post_order(body: OrderSubmission) -> Acknowledgement:
        """Accepts a signed order; answers only after it is committed to the store."""
        return _submit(MessageKind.ORDER, body)

    @app.post("/bids", status_code=201, response_model=Acknowledgement, responses=_errors(*_BODY, *_COMMON))
    def post_bid(body: BidSubmission) -> Acknowledgement:
        """Accepts a signed bid; answers only after it is committed to the store, with the
        matcher's signed receipt naming the round the bid will be cleared in."""
        return _submit(MessageKind.BID, body)

    @app.post("/orders/batch", status_code=201, response_model=BatchAcknowledgement,
              responses=_errors(*_BODY, *_COMMON))
    def post_orders(body: OrderBatch) -> Any:
        """Accepts up to 1,000 signed orders at once, all or none, in one durable commit.
        A refusal names every refused order by its position: `orders.<i>.<field>`."""
        return _submit_batch(MessageKind.ORDER, body.orders)

    @app.post("/bids/batch", status_code=201, response_model=BatchAcknowledgement,
              responses=_errors(*_BODY, *_COMMON))
    def post_bids(body: BidBatch) -> Any:
        """Accepts up to 1,000 signed bids at once (a price ladder), all or none, in one durable
        commit, each with its receipt. A refusal names every refused bid: `bids.<i>.<field>`."""
        return _submit_batch(MessageKind.BID, body.bids)

    # Without these, GET /bids/batch would be taken for a lookup of the digest "batch" (a 422).
    @app.api_route("/orders/batch", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    @app.api_route("/bids/batch", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def batch_other_methods(request: Request) -> JSONResponse:
        response = _error(405, "method", f"{request.method} is not allowed on {request.url.path}")
        response.headers["Allow"] = "POST"
        return response

    def _get(kind: MessageKind, digest: str) -> Any:
        stored = matcher.store.get_message(digest.lower(), kind)
        if stored is None:
            return _error(404, "digest", f"no {kind.value} with digest {digest}")
        return _message_view(stored)

    def _list(kind: MessageKind, signer: str, status: str | None, limit: int, offset: int) -> Any:
        stored = matcher.store.messages_of(checksum(signer), kind, status=status, limit=limit, offset=offset)
        return [_message_view(s) for s in stored]

    @app.get("/orders", response_model=list[MessageView], responses=_errors(422, *_COMMON))
    def list_orders(signer: Signer, status: Status = None, limit: Limit = 100, offset: Offset = 0) -> Any:
        """A buyer's orders, oldest first, a page at a time: what any machine can look up."""
        return _list(MessageKind.ORDER, signer, status, limit, offset)

    @app.get("/bids", response_model=list[MessageView], responses=_errors(422, *_COMMON))
    def list_bids(signer: Signer, status: Status = None, limit: Limit = 100, offset: Offset = 0) -> Any:
        """A provider's bids (with their receipts), oldest first, a page at a time."""
        return _list(MessageKind.BID, signer, status, limit, offset)

    @app.get("/orders/{digest}", response_model=MessageView, responses=_errors(404, 422, *_COMMON))
    def get_order(digest: Digest) -> Any:
        return _get(MessageKind.ORDER, digest)

    @app.get("/bids/{digest}", response_model=MessageView, responses=_errors(404, 422, *_COMMON))
    def get_bid(digest: Digest) -> Any:
        return _get(MessageKind.BID, digest)

    def _recheck(kind: MessageKind, digest: str) -> Any:
        stored = matcher.recheck_cancel(kind, digest.lower())
        if stored is None:
            return _error(404, "digest", f"no {kind.value} with digest {digest}")
        return _message_view(stored)

    @app.post("/orders/{digest}/recheck", response_model=MessageView, responses=_errors(404, 422, *_COMMON))
    def recheck_order(digest: Digest) -> Any:
        """Re-reads the order's nonce on chain now: if its signer requested the cancellation, the
        order is dropped at once (else at the next round close). Anyone may ask: it only reads."""
        return _recheck(MessageKind.ORDER, digest)

    @app.post("/bids/{digest}/recheck", response_model=MessageView, responses=_errors(404, 422, *_COMMON))
    def recheck_bid(digest: Digest) -> Any:
        """Re-reads the bid's nonce on chain now: a bid whose cancellation was requested is dropped at once."""
        return _recheck(MessageKind.BID, digest)

    @app.get("/markets", response_model=list[MarketView], responses=_errors(*_COMMON))
    def get_markets() -> Any:
        """Markets with open orders or bids, and each market's last clearing price."""
        now = matcher.chain.block_time()
        prices = matcher.store.last_prices()
        rows = matcher.store.market_summary(now)
        for row in rows:
            last = prices.get(row["market"])
            row["last_round"], row["last_price"] = (last.round, last.price) if last else (None, None)
            row["last_price_rule"] = known_rule(last.rule) if last else None
            row["last_price_reason"] = explain_price(last.price, last.rule) if last else None
        return rows

    @app.get("/rounds/{round_id}", response_model=RoundView, responses=_errors(404, 422, *_COMMON))
    def get_round(round_id: Annotated[int, Path(ge=0, le=2**64 - 1)]) -> Any:
        """A round as stored, and how the last close asked for it through the API went (`close`):
        poll this after `POST /rounds/close` until `close.status` is no longer `running`."""
        stored = matcher.round(round_id)
        if stored is None:
            return _error(404, "round_id", f"no round {round_id}")
        return RoundView(
            id=stored.id,
            state=str(getattr(stored.state, "value", stored.state)),
            opened_at=stored.opened_at,
            cleared_at=stored.cleared_at,
            confirmed_at=stored.confirmed_at,
            clearing=stored.clearing,
            error=stored.error,
            batches=[_batch_view(b) for b in stored.batches],
            close=closer.status(round_id),
        )

    @app.post("/rounds/close", status_code=202, response_model=CloseAccepted,
              responses=_errors(401, 403, 422, *_COMMON))
    def close_round(request: Request, authorization: Annotated[str | None, Header()] = None) -> Any:
        """Closes the open round now (admin only): answers 202 at once with the round being
        closed, which is cleared and settled in the background; poll `GET /rounds/{round_id}`
        until its `close.status` is `done` (the report), `failed` (the error) or `superseded`.
        Closes run one at a time: asking again while one runs answers 202 for the same round."""
        if not admin_token:
            return _error(403, "authorization", "closing rounds on demand is disabled (no admin token set)")
        supplied = (authorization or "").removeprefix("Bearer ").strip()
        if not supplied:
            return _error(401, "authorization", "missing 'Authorization: Bearer <admin token>' header")
        if not hmac.compare_digest(supplied.encode("utf-8", "replace"), admin_token.encode("utf-8")):
            return _error(403, "authorization", "wrong admin token")
        if not matcher.leads():
            # Several processes share one Postgres store and only the leader closes rounds: this
            # one is a follower (or lost the lock). Not forwarded: the caller picks the leader.
            state = matcher.leadership.describe()
            leader = state.get("leader_process") or "none right now (a follower takes over within seconds)"
            return _error(503, "leader", f"this matcher process ({state.get('process')}) is a follower and does not"
                          f" close rounds now; the leader is {leader}: ask the leader's API, or retry shortly")
        round_id, job = closer.request()
        poll = f"/rounds/{round_id}"
        return JSONResponse(
            status_code=202,
            content=CloseAccepted(round_id=round_id, status=job.status, poll=poll).model_dump(),
            headers={"Location": poll},
        )

    @app.get("/health", response_model=Health, responses=_errors(*_COMMON))
    def health() -> Any:
        """Reads only: the chain's head and what this matcher is (no store writes)."""
        return Health(
            status="ok",
            chain_id=matcher.chain.book.chain_id,
            block=matcher.chain.head().number,  # cached; a stalled node fails fast into a 503
            settlement=matcher.chain.book.address("UnderbidSettlement"),
            matcher=matcher.account.address,
            open_round=_intake_round(matcher),
            leader=matcher.leadership.is_leader,
            leadership=matcher.leadership.describe(),
        )

    from underbid.matcher.explorer import mount_explorer  # imported here: the explorer builds on this module

    mount_explorer(app, matcher)
    return app
