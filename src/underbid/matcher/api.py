"""The matcher's HTTP JSON API (FastAPI; the OpenAPI schema is served at /openapi.json).

Every 4xx answer has the same body, naming the field at fault and the reason:
`{"detail": [{"field": "deadline", "reason": "expired: ..."}]}`.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any, Literal

import requests
from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from underbid.chain.view import ChainReadError
from underbid.protocol.eip712 import Bid, Order, checksum
from underbid.matcher.rounds import Matcher
from underbid.matcher.store import MessageKind, StoredMessage
from underbid.matcher.validation import Accepted, Rejection, Rejections, Submission

log = logging.getLogger("underbid.matcher.api")

Digest = Annotated[str, Path(pattern=r"^0x[0-9a-fA-F]{64}$", description="EIP-712 digest, 0x + 64 hex digits")]
Signer = Annotated[str, Query(pattern=r"^0x[0-9a-fA-F]{40}$", description="the buyer's or provider's address")]
Status = Annotated[Literal["open", "filled", "dropped"] | None, Query(description="only messages in this state")]
Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many messages")]
Offset = Annotated[int, Query(ge=0, lt=2**63, description="skip this many (the oldest first)")]


class _Signed(BaseModel):
    signature: str = Field(description="65-byte (r, s, v) signature, 0x-hex", examples=["0x" + "ab" * 65])
    spec: str | None = Field(
        default=None, description="Optional market spec string; if given it must hash to `market`."
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

    matcher: str
    bidHash: str
    round: int
    issuedAt: int
    signature: str


class Acknowledgement(BaseModel):
    digest: str
    status: str
    receipt: SignedReceipt | None = None


class BatchAcknowledgement(BaseModel):
    accepted: list[Acknowledgement]


class FieldError(BaseModel):
    field: str
    reason: str


class ErrorBody(BaseModel):
    detail: list[FieldError]


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 422, 503)
}


def _error(status: int, field: str, reason: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": [{"field": field, "reason": reason}]})


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
    }


def create_app(matcher: Matcher, admin_token: str | None = None) -> FastAPI:
    """The API over `matcher`. `POST /rounds/close` needs `Authorization: Bearer <admin_token>`."""
    app = FastAPI(
        title="Underbid matcher",
        version="0.1.0",
        description="Collects EIP-712 signed GPU orders and bids, clears reverse auctions, settles on chain.",
    )

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
            return _error(405, "method", f"{request.method} is not allowed on {request.url.path}")
        if exc.status_code == 400:  # the body could not be read or decoded at all
            return _error(422, "body", str(exc.detail))
        return _error(exc.status_code, "request", str(exc.detail))

    @app.exception_handler(ConnectionError)
    @app.exception_handler(requests.RequestException)  # what web3's HTTP provider raises
    async def _chain_down(_: Request, exc: Exception) -> JSONResponse:
        return _error(503, "chain", f"the chain RPC is unreachable ({type(exc).__name__}): try again shortly")

    @app.exception_handler(ChainReadError)
    async def _chain_refused(_: Request, exc: ChainReadError) -> JSONResponse:
        return _error(503, "chain", f"the chain RPC refused a read ({exc}): try again shortly")

    def _submissions(kind: MessageKind, bodies: list[_Signed]) -> list[Submission]:
        model = Order if kind is MessageKind.ORDER else Bid
        fields = set(model.model_fields)
        return [
            Submission(model.model_validate(body.model_dump(include=fields)), body.signature, body.spec)
            for body in bodies
        ]

    def _acknowledgement(accepted: Accepted) -> Acknowledgement:
        return Acknowledgement(digest=accepted.digest, status="open", receipt=accepted.receipt)

    def _submit(kind: MessageKind, body: _Signed) -> Acknowledgement:
        (submission,) = _submissions(kind, [body])
        return _acknowledgement(matcher.accept(kind, submission.message, submission.signature, submission.spec))

    def _submit_batch(kind: MessageKind, bodies: list[_Signed]) -> BatchAcknowledgement | JSONResponse:
        try:
            accepted = matcher.accept_batch(kind, _submissions(kind, bodies))
        except Rejections as refused:
            # Field paths as for schema errors: "bids.3.nonce" is the nonce of the fourth bid.
            return JSONResponse(status_code=refused.status, content={"detail": [
                {"field": f"{kind.value}s.{i}.{rejection.field}", "reason": rejection.reason}
                for i, rejection in refused.items
            ]})
        return BatchAcknowledgement(accepted=[_acknowledgement(a) for a in accepted])

    @app.post("/orders", status_code=201, response_model=Acknowledgement, responses=_ERRORS)
    def post_order(body: OrderSubmission) -> Acknowledgement:
        """Accepts a signed order; answers only after it is committed to the store."""
        return _submit(MessageKind.ORDER, body)

    @app.post("/bids", status_code=201, response_model=Acknowledgement, responses=_ERRORS)
    def post_bid(body: BidSubmission) -> Acknowledgement:
        """Accepts a signed bid; answers only after it is committed to the store, with the
        matcher's signed receipt naming the round the bid will be cleared in."""
        return _submit(MessageKind.BID, body)

    @app.post("/orders/batch", status_code=201, response_model=BatchAcknowledgement, responses=_ERRORS)
    def post_orders(body: OrderBatch) -> Any:
        """Accepts up to 1,000 signed orders at once, all or none, in one durable commit.
        A refusal names every refused order by its position: `orders.<i>.<field>`."""
        return _submit_batch(MessageKind.ORDER, body.orders)

    @app.post("/bids/batch", status_code=201, response_model=BatchAcknowledgement, responses=_ERRORS)
    def post_bids(body: BidBatch) -> Any:
        """Accepts up to 1,000 signed bids at once (a price ladder), all or none, in one durable
        commit, each with its receipt. A refusal names every refused bid: `bids.<i>.<field>`."""
        return _submit_batch(MessageKind.BID, body.bids)

    def _get(kind: MessageKind, digest: str) -> Any:
        stored = matcher.store.get_message(digest.lower(), kind)
        if stored is None:
            return _error(404, "digest", f"no {kind.value} with digest {digest}")
        return _message_view(stored)

    def _list(kind: MessageKind, signer: str, status: str | None, limit: int, offset: int) -> Any:
        stored = matcher.store.messages_of(checksum(signer), kind, status=status, limit=limit, offset=offset)
        return [_message_view(s) for s in stored]

    @app.get("/orders", responses=_ERRORS)
    def list_orders(signer: Signer, status: Status = None, limit: Limit = 100, offset: Offset = 0) -> Any:
        """A buyer's orders, oldest first, a page at a time: what any machine can look up."""
        return _list(MessageKind.ORDER, signer, status, limit, offset)

    @app.get("/bids", responses=_ERRORS)
    def list_bids(signer: Signer, status: Status = None, limit: Limit = 100, offset: Offset = 0) -> Any:
        """A provider's bids (with their receipts), oldest first, a page at a time."""
        return _list(MessageKind.BID, signer, status, limit, offset)

    @app.get("/orders/{digest}", responses=_ERRORS)
    def get_order(digest: Digest) -> Any:
        return _get(MessageKind.ORDER, digest)

    @app.get("/bids/{digest}", responses=_ERRORS)
    def get_bid(digest: Digest) -> Any:
        return _get(MessageKind.BID, digest)

    @app.get("/markets")
    def get_markets() -> list[dict[str, Any]]:
        """Markets with open orders or bids, and each market's last clearing price."""
        now = matcher.chain.block_time()
        prices = matcher.store.last_prices()
        rows = matcher.store.market_summary(now)
        for row in rows:
            last = prices.get(row["market"])
            row["last_round"], row["last_price"] = (last if last else (None, None))
        return rows

    @app.get("/rounds/{round_id}", responses=_ERRORS)
    def get_round(round_id: Annotated[int, Path(ge=0, lt=2**64)]) -> Any:
        stored = matcher.round(round_id)
        if stored is None:
            return _error(404, "round_id", f"no round {round_id}")
        return {
            "id": stored.id,
            "state": stored.state.value,
            "opened_at": stored.opened_at,
            "cleared_at": stored.cleared_at,
            "confirmed_at": stored.confirmed_at,
            "clearing": stored.clearing,
            "error": stored.error,
            "batches": [
                {"batch": b.batch, "state": b.state, "tx_hash": b.tx_hash, "gas_used": b.gas_used,
                 "matches": len(b.payload["matches"])}
                for b in stored.batches
            ],
        }

    @app.post("/rounds/close", responses=_ERRORS)
    def close_round(authorization: Annotated[str | None, Header()] = None) -> Any:
        """Closes the open round now (admin only): clears it and settles it on chain."""
        if not admin_token:
            return _error(403, "authorization", "closing rounds on demand is disabled (no admin token set)")
        supplied = (authorization or "").removeprefix("Bearer ").strip()
        if not supplied:
            return _error(401, "authorization", "missing 'Authorization: Bearer <admin token>' header")
        if not hmac.compare_digest(supplied.encode("utf-8", "replace"), admin_token.encode("utf-8")):
            return _error(403, "authorization", "wrong admin token")
        return matcher.close_round().__dict__

    @app.get("/health")
    def health() -> dict[str, Any]:
        block = matcher.chain.w3.eth.block_number
        return {
            "status": "ok",
            "chain_id": matcher.chain.book.chain_id,
            "block": block,
            "settlement": matcher.chain.book.address("UnderbidSettlement"),
            "matcher": matcher.account.address,
            "open_round": matcher.store.open_round(),
        }

    return app
