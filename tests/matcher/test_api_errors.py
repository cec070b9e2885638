"""The matcher's HTTP API refuses every bad request with a 4xx naming the field, and never a 500.

Each test runs a real matcher process (real HTTP, real SQLite) against the test anvil. Every
response goes through `Api`, which checks that nothing reaches a 5xx, that every error body has
the shape `{"detail": [{"field": ..., "reason": ...}]}`, and at the end of the test that no refused
message is in the store while every accepted one still is.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from underbid.chain.view import ChainView
from underbid.devnet.node import MATCHER, dev_account
from underbid.protocol.eip712 import Order, Receipt, recover_signer

from ..conftest import A100, H100, HOUR, UBC
from .conftest import ADMIN_TOKEN, on_both_stores, order_body, store_rows

#: The matcher's chain cache lifetime (ChainView's default).
CHAIN_CACHE_TTL = ChainView.__init__.__defaults__[-1]

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
H100_SPEC = "gpu=nvidia-h100;vram=80;gpus=8;region=us-east"
A100_SPEC = "gpu=nvidia-a100;vram=80;gpus=8;region=eu-west"


def malleate(signature: bytes) -> bytes:
    """The high-s twin of a signature: it recovers the same signer, and EIP-2 / OpenZeppelin refuse it."""
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    assert s <= SECP256K1_N // 2, "eth-account signs with low s"
    return r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])


class Api:
    """An HTTP client over the matcher that checks every answer and remembers what was accepted."""

    def __init__(self, process, domain):
        self.domain = domain
        self.responses: list[httpx.Response] = []
        self.http = httpx.Client(
            base_url=process.url, timeout=120, event_hooks={"response": [self.responses.append]}
        )
        self.accepted: dict[str, tuple[str, object]] = {}  # digest -> (kind, message)
        self.refused: dict[str, str] = {}  # digest -> kind, of messages that must not be stored

    def close(self) -> None:
        self.http.close()

    def digest(self, message) -> str:
        return "0x" + message.digest(self.domain).hex()

    @staticmethod
    def path(kind: str) -> str:
        return "/orders" if kind == "order" else "/bids"

    @staticmethod
    def kind_of(message) -> str:
        return "order" if isinstance(message, Order) else "bid"

    # ----- requests -----

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        r = self.http.request(method, url, **kwargs)
        assert r.status_code < 500, f"{method} {url} -> {r.status_code}: {r.text}"
        return r

    def post(self, message, signature: bytes | str, **extra) -> httpx.Response:
        sig = signature if isinstance(signature, str) else "0x" + signature.hex()
        body = {**message.model_dump(by_alias=True), "signature": sig, **extra}
        return self.request("POST", self.path(self.kind_of(message)), json=body)

    def accept(self, message, signature: bytes, **extra) -> str:
        r = self.post(message, signature, **extra)
        assert r.status_code == 201, r.text
        digest = self.digest(message)
        body = r.json()
        assert (body["digest"], body["status"]) == (digest, "open")
        if self.kind_of(message) == "bid":
            # The receipt names this bid and is signed by the matcher, in the same EIP-712 domain.
            rc = body["receipt"]
            assert set(rc) == {"matcher", "bidHash", "round", "issuedAt", "signature"}, rc
            receipt = Receipt(matcher=rc["matcher"], bid_hash=rc["bidHash"], round=rc["round"],
                              issued_at=rc["issuedAt"])
            assert rc["bidHash"] == digest and rc["round"] >= 1 and rc["matcher"] == dev_account(MATCHER).address
            signer = recover_signer(receipt.digest(self.domain), bytes.fromhex(rc["signature"][2:]))
            assert signer == dev_account(MATCHER).address
        else:
            assert body["receipt"] is None
        self.accepted[digest] = (self.kind_of(message), message)
        return digest

    def refuse(self, message, signature: bytes | str, status: int, field: str, *, track: bool = True, **extra) -> str:
        """Posts a signed message that must be refused; returns the reason given."""
        reason = expect_error(self.post(message, signature, **extra), status, field)
        if track:
            self.refused[self.digest(message)] = self.kind_of(message)
        return reason

    def refuse_body(self, kind: str, status: int, field: str, **kwargs) -> str:
        """Posts a raw body (json=... or content=...) that must be refused; returns the reason."""
        return expect_error(self.request("POST", self.path(kind), **kwargs), status, field)

    # ----- the final check -----

    def verify_store(self) -> None:
        """No refused message is stored; every accepted one is, with its own fields and signature."""
        assert self.accepted, "a test must leave at least one accepted message to look up"
        for digest, kind in self.refused.items():
            assert digest not in self.accepted
            expect_error(self.request("GET", f"{self.path(kind)}/{digest}"), 404, "digest")
        for digest, (kind, message) in self.accepted.items():
            r = self.request("GET", f"{self.path(kind)}/{digest}")
            assert r.status_code == 200, r.text
            view = r.json()
            assert view["kind"] == kind and view["digest"] == digest and view["status"] == "open"
            assert view["message"] == message.model_dump(by_alias=True)
            # The stored signature is the one that was accepted: a low-s signature by the signer.
            stored = bytes.fromhex(view["signature"][2:])
            assert len(stored) == 65 and int.from_bytes(stored[32:64], "big") <= SECP256K1_N // 2
        # Nothing that was refused (even a body without a computable digest) counts as open.
        counts: dict[str, list[int]] = {}
        for kind, message in self.accepted.values():
            counts.setdefault(message.market, [0, 0])[0 if kind == "order" else 1] += 1
        r = self.request("GET", "/markets")
        assert r.status_code == 200, r.text
        assert {row["market"]: [row["open_orders"], row["open_bids"]] for row in r.json()} == counts
        assert self.responses and all(resp.status_code < 500 for resp in self.responses)


def expect_error(r: httpx.Response, status: int, field: str) -> str:
    """Asserts a 4xx error of the documented shape naming `field`; returns its reason."""
    assert r.status_code < 500, r.text
    assert r.status_code == status, f"expected {status} naming {field!r}, got {r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], list) and body["detail"], body
    for item in body["detail"]:
        assert set(item) == {"field", "reason"}, item
        assert isinstance(item["field"], str) and item["field"], item
        assert isinstance(item["reason"], str) and item["reason"].strip(), item
    reasons = [item["reason"] for item in body["detail"] if item["field"] == field]
    assert reasons, f"no error names {field!r}: {body}"
    return reasons[0]


@pytest.fixture
def api(matcher_process, domain):
    client = Api(matcher_process, domain)
    yield client
    client.close()


# ----- signatures -----


@on_both_stores
def test_bad_signatures_are_refused(market, buyers, providers, api):
    m = market
    buyer, other_buyer = buyers[0], buyers[1]
    provider, other_provider = providers[0], providers[1]
    m.fund_buyer(buyer, 1_000 * UBC)
    m.stake_provider(provider, 8)

    # `order` and `bid` are only ever posted with bad signatures; `good_*` are accepted at the end.
    order, sig = m.order(buyer)
    r, s = sig[:32], sig[32:64]

    # Not hex, odd-length hex, empty, spaces: refused by the schema's exact pattern (0x + 130 hex
    # digits), before any recovery.
    for garbage in ("0xzz" + "ab" * 64, "not a signature", "0x" + "ab" * 64 + "a", "", "0x",
                    "0x" + sig.hex()[:128] + " " + sig.hex()[128:], " 0x" + sig.hex(), "0X" + sig.hex()):
        assert "pattern" in api.refuse(order, garbage, 422, "signature")
    # Wrong length: 64 bytes (the EIP-2098 compact length) and 66 bytes.
    assert "130" in api.refuse(order, sig[:64], 422, "signature")
    assert "130" in api.refuse(order, sig + b"\x00", 422, "signature")
    # A bad v (0/1 instead of 27/28, or 29), and r = s = 0: cannot be recovered.
    for bad in (r + s + bytes([sig[64] - 27]), r + s + b"\x1d", bytes(64) + b"\x1b"):
        api.refuse(order, bad, 400, "signature")
    # High s: the malleated twin of a valid signature recovers the same buyer but is refused.
    assert "malleated" in api.refuse(order, malleate(sig), 400, "signature")

    # A signature by another key: the signer is not the order's buyer.
    order2, _ = m.order(buyer)
    reason = api.refuse(order2, order2.sign(other_buyer.private_key, m.domain), 400, "signature")
    assert str(other_buyer.address) in reason and str(buyer.address) in reason and "buyer" in reason
    # A valid signature over other fields: the body was tampered with after signing.
    order3, sig3 = m.order(buyer, units=2)
    api.refuse(order3.model_copy(update={"units": 3}), sig3, 400, "signature")
    api.refuse(order3.model_copy(update={"buyer": str(other_buyer.address)}), sig3, 400, "signature")

    # The same for bids: another provider's key, a malleated signature, a bad length.
    bid, bid_sig = m.bid(provider)
    bid2, _ = m.bid(provider)
    reason = api.refuse(bid2, bid2.sign(other_provider.private_key, m.domain), 400, "signature")
    assert str(other_provider.address) in reason and "provider" in reason
    assert "malleated" in api.refuse(bid, malleate(bid_sig), 400, "signature")
    api.refuse(bid, bid_sig[1:], 422, "signature")

    # Genuine signatures are accepted; a malleated copy of an accepted message is still a
    # signature error (not a duplicate), and does not replace the stored signature.
    good_order, good_sig = m.order(buyer)
    good_bid, good_bid_sig = m.bid(provider)
    api.accept(good_order, good_sig)
    api.accept(good_bid, good_bid_sig)
    assert "malleated" in api.refuse(good_order, malleate(good_sig), 400, "signature", track=False)
    api.refuse(good_bid, malleate(good_bid_sig), 400, "signature", track=False)
    view = api.request("GET", f"/orders/{api.digest(good_order)}").json()
    assert view["signature"] == "0x" + good_sig.hex()
    api.verify_store()


# ----- deadline, nonce, market and spec -----


@on_both_stores
def test_deadline_nonce_and_spec_are_checked(market, chain, settlement, buyers, providers, api):
    m = market
    buyer, provider = buyers[0], providers[0]
    m.fund_buyer(buyer, 1_000 * UBC)
    m.stake_provider(provider, 8)

    # Expired: the deadline is judged by block time, the head block's. The matcher may have cached a
    # head moments ago, and the blocks mined since (funding above) can be seconds later than it
    # (anvil's clock runs on between blocks): a deadline this close is judged by a head read anew,
    # so no wait is needed here (a wait would hide exactly that bug).
    head = chain.blocks.head.timestamp
    assert "expired" in api.refuse(*m.order(buyer, deadline=head - 1), 400, "deadline")
    api.refuse(*m.bid(provider, deadline=head - 1), 400, "deadline")
    api.refuse(*m.order(buyer, deadline=0), 400, "deadline")

    # Nonces whose cancellation their signers announced on chain: refused at once (the nonce
    # becomes void only after the notice period).
    cancelled_order, cancelled_order_sig = m.order(buyer, nonce=(7 << 7) | 3)
    cancelled_bid, cancelled_bid_sig = m.bid(provider, nonce=2**255 + 77)
    for msg, who in ((cancelled_order, buyer), (cancelled_bid, provider)):
        settlement.requestCancel([msg.nonce], sender=who)
        assert settlement.isNonceCancelled(who, msg.nonce) and not settlement.isNonceUsed(who, msg.nonce)
    assert "cancellation requested" in api.refuse(cancelled_order, cancelled_order_sig, 400, "nonce")
    api.refuse(cancelled_bid, cancelled_bid_sig, 400, "nonce")
    # Nonces consumed on chain: an order and a bid completely filled by a settlement.
    filled_order = m.order(buyer, units=2)
    filled_bid = m.bid(provider, capacity=2)
    m.settle([filled_order], [filled_bid], [(0, 0, 2)], {H100: 2 * UBC})
    assert settlement.isNonceUsed(buyer, filled_order[0].nonce)
    # The matcher may have read these nonce words a moment ago (it prefetches a signer's next
    # word): its chain cache holds them for up to CHAIN_CACHE_TTL seconds.
    time.sleep(CHAIN_CACHE_TTL + 0.2)
    assert "used or cancelled" in api.refuse(*filled_order, 400, "nonce")
    api.refuse(*filled_bid, 400, "nonce")
    # A nonce claimed by a partly filled message: another message with that nonce is refused.
    # (In a bitmap word of its own: the matcher caches the words it read for a couple of seconds.)
    partial_bid = m.bid(provider, capacity=2, nonce=(99 << 7) | 5)
    m.settle([m.order(buyer, units=1)], [partial_bid], [(0, 0, 1)], {H100: 2 * UBC})
    claimed, voided = settlement.nonceState(provider, partial_bid[0].nonce)
    assert claimed and not voided
    assert "taken by another message" in api.refuse(*m.bid(provider, nonce=partial_bid[0].nonce), 400, "nonce")
    # Another nonce in the same bitmap word as the cancelled one is still free.
    neighbour = m.order(buyer, nonce=(7 << 7) | 4)
    api.accept(*neighbour)

    # Malformed market ids are schema errors naming `market`.
    order, sig = m.order(buyer)
    body = order_body(order, sig)
    for bad in ("0x1234", "0x" + "zz" * 32, H100[2:], H100 + "00", "0x" + "0" * 63, "", 12345, None):
        api.refuse_body("order", 422, "market", json={**body, "market": bad})
        api.refuse_body("bid", 422, "market", json={**order_body(*m.bid(provider)), "market": bad})

    # A spec that does not hash to the market, or that cannot be parsed.
    assert A100 in api.refuse(*m.order(buyer, market=H100), 400, "spec", spec=A100_SPEC)
    api.refuse(*m.bid(provider, market=A100), 400, "spec", spec=H100_SPEC)
    for bad_spec in ("gpu=nvidia-h100", "not a spec", "", "gpu=nvidia-h100;vram=80;gpus=8;color=red",
                     "gpu=nvidia-h100;vram=eighty;gpus=8", "gpu=NVIDIA H100;vram=80;gpus=8",
                     "gpu=nvidia-h100;gpu=nvidia-h100;vram=80;gpus=8", ";;;="):
        api.refuse(*m.order(buyer), 400, "spec", spec=bad_spec)
    # A typo is not a new market: the catalogue refuses it with what was meant.
    assert "did you mean us-east?" in api.refuse(*m.order(buyer), 400, "spec",
                                                 spec="gpu=nvidia-h100;vram=80;gpus=8;region=useast")
    api.refuse_body("order", 422, "spec", json={**order_body(*m.order(buyer)), "spec": 42})
    # A spec that normalizes to the market is accepted, and names the market.
    api.accept(*m.order(buyer), spec="Region=us-east; GPU=NVIDIA-H100; gpus=08; vram=80")
    markets = {row["market"]: row for row in api.request("GET", "/markets").json()}
    assert markets[H100]["spec"] == H100_SPEC
    api.verify_store()


# ----- on-chain facts: stake and escrow; zero amounts; duplicates -----


@on_both_stores
def test_stake_escrow_zero_amounts_and_duplicates(market, accounts, buyers, providers, api):
    m = market
    rich, exact, short, unfunded = buyers[0], buyers[1], buyers[2], accounts[11]
    staked, unstaked = providers[0], providers[1]
    cost = 2 * 3 * UBC * 2  # units=2, max_price=3 UBC, duration=2 h: the helper's default order
    m.fund_buyer(rich, 1_000 * UBC)
    m.fund_buyer(exact, cost)
    m.fund_buyer(short, cost - 1)
    m.stake_provider(staked, 4)
    m.bind(unfunded)  # bound, so what is refused is the missing escrow (or stake)
    m.bind(unstaked)

    # Escrow: the buyer's available escrow must cover the order at its max price.
    assert "deposit" in api.refuse(*m.order(unfunded), 400, "buyer")
    api.refuse(*m.order(short, units=2, duration=2 * HOUR, max_price=3 * UBC), 400, "buyer")
    api.refuse(*m.order(rich, units=2**32 - 1, duration=2**32 - 1, max_price=2**64 - 1), 400, "buyer")
    api.accept(*m.order(exact, units=2, duration=2 * HOUR, max_price=3 * UBC))

    # Stake: a provider's available stake must cover the capacity of all its live bids.
    api.refuse(*m.bid(unstaked, capacity=1), 400, "capacity")
    api.refuse(*m.bid(staked, capacity=5), 400, "capacity")
    api.refuse(*m.bid(staked, capacity=2**32 - 1), 400, "capacity")
    api.accept(*m.bid(staked, capacity=3))
    reason = api.refuse(*m.bid(staked, capacity=2), 400, "capacity")  # 3 + 2 > 4
    assert "reserve 3" in reason and "at most 1" in reason
    api.accept(*m.bid(staked, capacity=1, market=A100))  # the reservation spans markets
    api.refuse(*m.bid(staked, capacity=1), 400, "capacity")  # 3 + 1 + 1 > 4

    # Zero amounts are refused, naming the field.
    api.refuse(*m.order(rich, units=0), 400, "units")
    api.refuse(*m.order(rich, duration=0), 400, "duration")
    api.refuse(*m.order(rich, max_price=0), 400, "maxPrice")
    m.stake_provider(providers[2], 4)
    api.refuse(*m.bid(providers[2], capacity=0), 400, "capacity")
    api.refuse(*m.bid(providers[2], max_duration=0), 400, "maxDuration")

    # Duplicates: the same signed message twice is a conflict, not a second row.
    order = m.order(rich)
    bid = m.bid(providers[2], capacity=2)
    api.accept(*order)
    api.accept(*bid)
    assert api.digest(order[0]) in api.refuse(*order, 409, "signature", track=False)
    api.refuse(*bid, 409, "signature", track=False)
    api.refuse(*order, 409, "signature", track=False, spec=H100_SPEC)  # extras do not make it new
    # A duplicate bid does not count twice against the stake: 2 more units still fit in 4.
    api.accept(*m.bid(providers[2], capacity=2))
    api.verify_store()


# ----- the honest matcher's intake rules: binding, matcher, minimum lease, cumulative escrow, one nonce -----


@on_both_stores
def test_the_honest_matchers_intake_rules(market, accounts, settlement, buyers, providers, outsider, params, api):
    m = market
    buyer, provider = buyers[0], providers[0]
    m.fund_buyer(buyer, 1_000 * UBC)
    m.stake_provider(provider, 8)

    # A message naming another matcher: that matcher alone may settle it.
    reason = api.refuse(*m.order(buyer, matcher=str(outsider.address)), 400, "matcher")
    assert str(outsider.address) in reason
    api.refuse(*m.bid(provider, matcher=str(outsider.address)), 400, "matcher")

    # An account that never bound itself to this matcher, with funds enough.
    unbound_buyer, unbound_provider = accounts[11], accounts[21]
    m.mint_credits(unbound_buyer, 100 * UBC)
    settlement.deposit(100 * UBC, sender=unbound_buyer)
    assert "bind your account to this matcher first (underbid " in api.refuse(*m.order(unbound_buyer), 400, "buyer")
    m.stake_provider(unbound_provider, 4)
    settlement.bindMatcher(outsider, sender=unbound_provider)  # asks to leave: a change is pending
    reason = api.refuse(*m.bid(unbound_provider, capacity=1), 400, "provider")
    assert "pending" in reason and "bind your account to this matcher first" in reason
    # Bound to another matcher outright.
    other_buyer = accounts[12]
    m.mint_credits(other_buyer, 100 * UBC)
    settlement.deposit(100 * UBC, sender=other_buyer)
    m.bind(other_buyer, outsider)
    api.refuse(*m.order(other_buyer), 400, "buyer")

    # An order shorter than the protocol's shortest lease.
    assert params.min_lease_duration == 60
    reason = api.refuse(*m.order(buyer, duration=params.min_lease_duration - 1), 400, "duration")
    assert "at least 60 seconds" in reason
    api.accept(*m.order(buyer, duration=params.min_lease_duration, units=1))
    # An order that costs nothing at its max price (1 unit, 60 s, 59 base units an hour: 0.98 of a
    # base unit, rounded down) could never settle and would tie up no escrow.
    reason = api.refuse(*m.order(buyer, duration=60, units=1, max_price=59), 400, "maxPrice")
    assert "costs nothing" in reason
    api.accept(*m.order(buyer, duration=60, units=1, max_price=60))

    # Escrow is reserved across a buyer's open orders: escrow for one order does not fund two.
    thrifty = buyers[1]
    cost = 1 * 20 * UBC * 1  # units=1, max_price=20 UBC, duration=1 h (above the minimum mint)
    m.fund_buyer(thrifty, cost)
    api.accept(*m.order(thrifty, units=1, max_price=20 * UBC, duration=HOUR))
    reason = api.refuse(*m.order(thrifty, units=1, max_price=20 * UBC, duration=HOUR), 400, "buyer")
    assert "open orders reserve" in reason and "deposit" in reason
    # Nor within one batch request.
    thrifty2 = buyers[2]
    m.fund_buyer(thrifty2, cost)
    pair = [m.order(thrifty2, units=1, max_price=20 * UBC, duration=HOUR) for _ in range(2)]
    r = api.request("POST", "/orders/batch", json=batch_body("order", pair))
    expect_error(r, 400, "orders.1.buyer")
    assert {item["field"] for item in r.json()["detail"]} == {"orders.1.buyer"}
    for order, _ in pair:
        api.refused[api.digest(order)] = "order"
    # Escrow announced to leave is not available either.
    leaving = accounts[13]
    m.fund_buyer(leaving, 100 * UBC)
    settlement.requestWithdrawal(90 * UBC, sender=leaving)
    # The helper's order costs 12 UBC at its max price; only 10 of the 100 UBC deposited are available.
    assert "available escrow 10 UBC" in api.refuse(*m.order(leaving), 400, "buyer")

    # One open message per (signer, nonce): a second message with an open one's nonce is a 409.
    first = m.bid(provider, capacity=1)
    api.accept(*first)
    reason = api.refuse(*m.bid(provider, capacity=1, price=3 * UBC, nonce=first[0].nonce), 409, "nonce")
    assert api.digest(first[0]) in reason
    twins = [m.bid(provider, capacity=1), None]
    twins[1] = m.bid(provider, capacity=1, price=3 * UBC, nonce=twins[0][0].nonce)
    r = api.request("POST", "/bids/batch", json=batch_body("bid", twins))
    expect_error(r, 409, "bids.1.nonce")
    for bid, _ in twins:
        api.refused[api.digest(bid)] = "bid"
    api.verify_store()


# ----- schema errors -----


def test_schema_errors_name_the_field(market, buyers, providers, api):
    m = market
    buyer, provider = buyers[0], providers[0]
    m.fund_buyer(buyer, 1_000 * UBC)
    m.stake_provider(provider, 8)
    order = order_body(*m.order(buyer))
    bid = order_body(*m.bid(provider))

    def without(body: dict, key: str) -> dict:
        return {k: v for k, v in body.items() if k != key}

    # Missing fields, each named (by its camelCase name).
    for key in ("buyer", "matcher", "market", "units", "duration", "maxPrice", "deadline", "nonce", "signature"):
        assert "required" in api.refuse_body("order", 422, key, json=without(order, key)).lower()
    for key in ("provider", "matcher", "capacity", "price", "maxDuration", "deadline", "nonce", "signature"):
        api.refuse_body("bid", 422, key, json=without(bid, key))
    # Every missing field is named at once.
    r = api.request("POST", "/orders", json={"signature": order["signature"]})
    expect_error(r, 422, "buyer")
    assert {d["field"] for d in r.json()["detail"]} >= {"buyer", "market", "units", "maxPrice", "nonce"}

    # Out of range for the Solidity type: negative, or above uint32 / uint64 / uint256.
    for key, bad in (("units", -1), ("units", 2**32), ("duration", -5), ("duration", 2**32),
                     ("maxPrice", -1), ("maxPrice", 2**64), ("deadline", 2**64), ("nonce", -1),
                     ("nonce", 2**256), ("units", 1.5), ("units", "two"), ("units", None), ("units", [2])):
        api.refuse_body("order", 422, key, json={**order, key: bad})
    for key, bad in (("capacity", -1), ("capacity", 2**32), ("price", 2**64), ("maxDuration", -1)):
        api.refuse_body("bid", 422, key, json={**bid, key: bad})
    # Malformed addresses and a non-string signature.
    for bad in ("0x" + "zz" * 20, "0x1234", "ab" * 20, "", 7):
        api.refuse_body("order", 422, "buyer", json={**order, "buyer": bad})
        api.refuse_body("bid", 422, "provider", json={**bid, "provider": bad})
        api.refuse_body("bid", 422, "matcher", json={**bid, "matcher": bad})
    api.refuse_body("order", 422, "signature", json={**order, "signature": 1234})
    # Unknown fields are refused, not ignored; so is a bid field on an order.
    api.refuse_body("order", 422, "priority", json={**order, "priority": "high"})
    api.refuse_body("order", 422, "capacity", json={**order, "capacity": 4})
    api.refuse_body("bid", 422, "units", json={**bid, "units": 4})
    # Not a JSON object at all.
    api.refuse_body("order", 422, "body", json=[order])
    api.refuse_body("order", 422, "body", json=None)
    api.refuse_body("order", 422, "body", json="an order")
    api.refuse_body("order", 422, "body", content=b"buyer=0x12&units=2")  # no JSON content type
    api.refuse_body("order", 422, "body", content=b"")
    # Malformed JSON: a 422 of the documented shape (see test_malformed_json_is_a_422_naming_the_body).
    for raw in (b"not json", b'{"buyer": ', b"{'buyer': 1}"):
        r = api.request("POST", "/orders", content=raw, headers={"content-type": "application/json"})
        expect_error(r, 422, r.json()["detail"][0]["field"])

    # The untouched bodies are valid, and are accepted.
    api.accept(*m.order(buyer))
    api.accept(*m.bid(provider))
    api.verify_store()


# ----- lookups and the admin endpoint -----


@on_both_stores
def test_lookups_and_round_close_auth(market, buyers, providers, api, matcher_process):
    m = market
    m.fund_buyer(buyers[0], 1_000 * UBC)
    m.stake_provider(providers[0], 8)
    order, bid = m.order(buyers[0]), m.bid(providers[0])
    order_digest, bid_digest = api.accept(*order), api.accept(*bid)

    # Unknown digests, and a digest of the other kind.
    expect_error(api.request("GET", "/orders/0x" + "ab" * 32), 404, "digest")
    expect_error(api.request("GET", "/bids/0x" + "ab" * 32), 404, "digest")
    expect_error(api.request("GET", f"/orders/{bid_digest}"), 404, "digest")
    expect_error(api.request("GET", f"/bids/{order_digest}"), 404, "digest")
    # A digest in upper case is the same digest.
    assert api.request("GET", "/orders/0x" + order_digest[2:].upper()).status_code == 200
    # Not a digest at all.
    for bad in ("not-a-hash", "0x1234", order_digest[2:], order_digest + "00", "0x" + "zz" * 32):
        expect_error(api.request("GET", f"/orders/{bad}"), 422, "digest")
        expect_error(api.request("GET", f"/bids/{bad}"), 422, "digest")

    # Rounds: unknown ids are 404, ids that are not uint64 are 422.
    expect_error(api.request("GET", "/rounds/999999"), 404, "round_id")
    for bad in ("-1", str(2**64), "abc", "1.5"):
        expect_error(api.request("GET", f"/rounds/{bad}"), 422, "round_id")

    # Closing a round needs the admin token.
    expect_error(api.request("POST", "/rounds/close"), 401, "authorization")
    expect_error(api.request("POST", "/rounds/close", headers={"Authorization": ""}), 401, "authorization")
    expect_error(api.request("POST", "/rounds/close", headers={"Authorization": "Bearer wrong"}), 403, "authorization")
    expect_error(api.request("POST", "/rounds/close", headers={"Authorization": f"Bearer {ADMIN_TOKEN}x"}),
                 403, "authorization")
    expect_error(api.request("POST", "/rounds/close", headers={"Authorization": f"Basic {ADMIN_TOKEN}"}),
                 403, "authorization")
    # Refused closes did nothing: the order and bid are still open. The right token works (the
    # bid's 2 UBC is under the order's 3 UBC max price, so the round clears and settles).
    api.verify_store()
    asked = api.request("POST", "/rounds/close", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert asked.status_code == 202, asked.text
    round_id = asked.json()["round_id"]
    assert asked.json()["poll"] == asked.headers["location"] == f"/rounds/{round_id}"
    # A second close while the first runs joins it (same round); one asked after it ends closes
    # the next round.
    again = api.request("POST", "/rounds/close", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert again.status_code == 202, again.text
    if again.json()["round_id"] != round_id:
        assert api.request("GET", f"/rounds/{round_id}").json()["close"]["status"] == "done"
    r = matcher_process.close_round()  # polls until the close ends; the round already closed is confirmed
    deadline = time.monotonic() + 120
    while (view := api.request("GET", f"/rounds/{round_id}").json())["close"]["status"] == "running":
        assert time.monotonic() < deadline, view
        time.sleep(0.1)
    report = view["close"]["report"]
    assert report["state"] == "confirmed" and report["matches"] == 1 and report["round_id"] == round_id
    assert r.status_code == 200 and r.json()["state"] in ("confirmed", "open"), r.text
    r = httpx.Response(200, json=report)
    round_view = api.request("GET", f"/rounds/{r.json()['round_id']}")
    assert round_view.status_code == 200 and round_view.json()["state"] == "confirmed"
    assert api.request("GET", f"/orders/{order_digest}").json()["status"] == "filled"


# ----- regressions: bugs found while writing these tests, now fixed.


def test_malformed_json_is_a_422_naming_the_body(api):
    for raw in (b"not json", b'{"buyer": ', b"\xff\xfe\x00", b"\xff"):
        r = api.request("POST", "/orders", content=raw, headers={"content-type": "application/json"})
        expect_error(r, 422, "body")


def test_unknown_paths_and_methods_use_the_error_shape(api):
    expect_error(api.request("GET", "/no-such-endpoint"), 404, "path")
    # A 405 names every method the path serves (Starlette named only the first route's).
    r = api.request("DELETE", "/orders")
    expect_error(r, 405, "method")
    assert r.headers["allow"] == "GET, POST"
    assert "POST" in api.request("PUT", "/rounds/close").headers["allow"]
    # GET /bids/batch was taken for a lookup of the digest "batch" (a 422).
    for path in ("/bids/batch", "/orders/batch"):
        for method in ("GET", "DELETE"):
            r = api.request(method, path)
            expect_error(r, 405, "method")
            assert r.headers["allow"] == "POST"


def test_hex_and_integer_fields_are_exact(market, buyers, providers, api):
    """Item 6 at the API: a hex field the old checks let through (`int(text, 16)` takes "_" and
    spaces) reached the ABI encoder / hashing; every hex and integer field now has one exact form."""
    m = market
    m.fund_buyer(buyers[0], 1_000 * UBC)
    m.stake_provider(providers[0], 8)
    order = order_body(*m.order(buyers[0]))
    bid = order_body(*m.bid(providers[0]))
    hex64 = order["market"][2:]
    for bad in ("0x" + hex64[:30] + "_" + hex64[31:], "0x" + hex64[:63] + " ", " 0x" + hex64[:63], "0X" + hex64,
                "0x" + hex64 + "\n", "0x" + hex64[:62], "0x" + "g" * 64):
        assert "pattern" in api.refuse_body("order", 422, "market", json={**order, "market": bad})
        api.refuse_body("bid", 422, "market", json={**bid, "market": bad})
    address = order["buyer"][2:]
    for bad in ("0x" + address[:19] + "_" + address[20:], "0x" + address[:39] + " ", "0X" + address,
                "0x" + address + "\n"):
        api.refuse_body("order", 422, "buyer", json={**order, "buyer": bad})
        api.refuse_body("order", 422, "matcher", json={**order, "matcher": bad})
    # Integers are JSON integers within the Solidity type: no strings, no floats, no booleans.
    for key in ("units", "duration", "maxPrice", "deadline", "nonce"):
        for bad in (str(order[key]), float(order[key]), True):
            api.refuse_body("order", 422, key, json={**order, key: bad})
    # The largest values of each type are in range (and refused only by the intake rules).
    api.refuse_body("order", 400, "signature", json={**order, "nonce": 2**256 - 1, "deadline": 2**64 - 1})
    api.refuse_body("order", 422, "nonce", json={**order, "nonce": 2**256})
    # An over-long number in `spec`: a plain ValueError before (a 500 and a reset connection).
    for spec, status in (("gpu=nvidia-h100;vram=" + "9" * 5000 + ";gpus=8", 422),
                         ("gpu=nvidia-h100;vram=" + "9" * 200 + ";gpus=8", 400),
                         ("gpu=nvidia-h100;vram=8\u00b2;gpus=8", 422), ("x" * 257, 422)):
        api.refuse_body("order", status, "spec", json={**order, "spec": spec})
    api.accept(*m.order(buyers[0]))
    api.verify_store()


def test_request_bodies_are_limited_before_they_are_read(api, matcher_process):
    """A 100 MB body was read and echoed back; now anything above 1 MiB is a 413 naming `body`,
    by its Content-Length before reading, or as soon as a streamed body passes the limit."""
    big = b'{"orders": [' + b" " * (2 << 20) + b"]}"
    r = api.request("POST", "/orders/batch", content=big, headers={"content-type": "application/json"})
    assert len(r.content) < 1000
    expect_error(r, 413, "body")

    def chunks():
        for _ in range(64):
            yield b" " * 65536

    r = api.request("POST", "/orders", content=chunks(), headers={"content-type": "application/json"})
    expect_error(r, 413, "body")
    assert api.request("GET", "/health").status_code == 200


@on_both_stores
def test_health_only_reads(api, matcher_process):
    """GET /health writes nothing: every round row is as it was (on Postgres down to its row
    version, `xmin`, which any UPDATE changes; on SQLite the file's data_version too)."""
    postgres = str(matcher_process.db).startswith("postgresql://")
    rounds = "SELECT id, state, closed_at" + (", xmin::text" if postgres else "") + " FROM rounds ORDER BY id"
    before = store_rows(matcher_process.db, rounds)
    db = None if postgres else sqlite3.connect(matcher_process.db)
    try:
        version = db.execute("PRAGMA data_version").fetchone()[0] if db else None
        for _ in range(5):
            r = api.request("GET", "/health")
            assert r.status_code == 200 and r.json()["open_round"] >= 1, r.text
        assert (db.execute("PRAGMA data_version").fetchone()[0] if db else None) == version
    finally:
        if db:
            db.close()
    assert before and store_rows(matcher_process.db, rounds) == before


@on_both_stores
def test_round_ids_beyond_sqlite_range_are_not_a_500(api):
    for round_id in (2**63 - 1, 2**63, 2**64 - 1):
        r = api.http.get(f"/rounds/{round_id}")
        assert r.status_code < 500, f"/rounds/{round_id} -> {r.status_code}: {r.text}"
        expect_error(r, 404, "round_id")


def test_non_ascii_admin_token_is_a_403(api):
    r = api.http.post("/rounds/close", headers={"Authorization": b"Bearer t\xe9st"})
    assert r.status_code < 500, r.text
    expect_error(r, 403, "authorization")


@on_both_stores
def test_concurrent_duplicates_are_409(market, buyers, api):
    m = market
    m.fund_buyer(buyers[0], 1_000 * UBC)
    orders = [m.order(buyers[0]) for _ in range(8)]
    copies = 8

    def race(order) -> list[int]:
        barrier = threading.Barrier(copies)
        body = order_body(*order)

        def one(_):
            with httpx.Client(base_url=api.http.base_url, timeout=120) as http:
                barrier.wait()
                return http.post("/orders", json=body).status_code

        with ThreadPoolExecutor(copies) as pool:
            return sorted(pool.map(one, range(copies)))

    statuses = [race(order) for order in orders]
    # Exactly one copy of each message is accepted; every other copy is a 409, none a 500.
    assert all(s == [201] + [409] * (copies - 1) for s in statuses), statuses
    for order, _ in orders:
        assert api.request("GET", f"/orders/{api.digest(order)}").status_code == 200


# ----- batches -----


def batch_body(kind: str, signed: list[tuple[object, bytes | str]]) -> dict:
    return {f"{kind}s": [order_body(message, signature) for message, signature in signed]}


@on_both_stores
def test_a_price_ladder_is_accepted_in_one_request(market, buyers, providers, api):
    m = market
    m.stake_provider(providers[0], 6)
    m.fund_buyer(buyers[0], 1_000 * UBC)
    ladder = [m.bid(providers[0], capacity=2, price=p * UBC) for p in (1, 2, 3)]
    r = api.request("POST", "/bids/batch", json=batch_body("bid", ladder))
    assert r.status_code == 201, r.text
    acks = r.json()["accepted"]
    # One acknowledgement per bid, in the request's order, each with its own signed receipt.
    assert [a["digest"] for a in acks] == [api.digest(bid) for bid, _ in ladder]
    for ack, (bid, _) in zip(acks, ladder, strict=True):
        rc = ack["receipt"]
        receipt = Receipt(matcher=rc["matcher"], bid_hash=rc["bidHash"], round=rc["round"], issued_at=rc["issuedAt"])
        assert rc["bidHash"] == ack["digest"] and ack["status"] == "open"
        signer = recover_signer(receipt.digest(api.domain), bytes.fromhex(rc["signature"][2:]))
        assert signer == dev_account(MATCHER).address
        api.accepted[ack["digest"]] = ("bid", bid)
    # The ladder reserved all 6 staked units: one more unit, alone or in a batch, does not fit.
    reason = api.refuse(*m.bid(providers[0], capacity=1), 400, "capacity")
    assert "reserve 6" in reason

    orders = [m.order(buyers[0], units=u) for u in (1, 2)]
    r = api.request("POST", "/orders/batch", json=batch_body("order", orders))
    assert r.status_code == 201, r.text
    assert [(a["digest"], a["receipt"]) for a in r.json()["accepted"]] == [(api.digest(o), None) for o, _ in orders]
    for order, _ in orders:
        api.accepted[api.digest(order)] = ("order", order)

    # Any machine can list a signer's messages, oldest first, a page at a time.
    listed = api.request("GET", "/bids", params={"signer": str(providers[0].address).lower()}).json()
    assert [b["digest"] for b in listed] == [a["digest"] for a in acks]
    assert [b["receipt"] for b in listed] == [a["receipt"] for a in acks]
    page = api.request("GET", "/bids", params={"signer": providers[0].address, "limit": 2, "offset": 1}).json()
    assert [b["digest"] for b in page] == [a["digest"] for a in acks[1:3]]
    open_orders = api.request("GET", "/orders", params={"signer": buyers[0].address, "status": "open"}).json()
    assert [o["digest"] for o in open_orders] == [api.digest(o) for o, _ in orders]
    assert api.request("GET", "/orders", params={"signer": buyers[0].address, "status": "filled"}).json() == []
    assert api.request("GET", "/bids", params={"signer": buyers[0].address}).json() == []
    expect_error(api.request("GET", "/bids", params={"signer": "0x1234"}), 422, "signer")
    expect_error(api.request("GET", "/bids"), 422, "signer")
    expect_error(api.request("GET", "/orders", params={"signer": buyers[0].address, "status": "gone"}), 422, "status")
    expect_error(api.request("GET", "/orders", params={"signer": buyers[0].address, "limit": 0}), 422, "limit")
    api.verify_store()


@on_both_stores
def test_a_batch_with_a_bad_message_is_refused_whole(market, buyers, providers, api):
    m = market
    m.stake_provider(providers[0], 4)
    m.stake_provider(providers[1], 4)
    good, also_good = m.bid(providers[0], capacity=1), m.bid(providers[1], capacity=1)
    forged_bid, _ = m.bid(providers[0], capacity=1)
    forged = (forged_bid, forged_bid.sign(providers[1].private_key, m.domain))
    # Expired by the head block's time, which the matcher judges by (the pending block's time can be
    # seconds later on an idle anvil); no wait for its head cache, as above.
    expired = m.bid(providers[1], capacity=1, deadline=m.chain.blocks.head.timestamp - 1)

    # Every refused message is named by its position; the good ones are not stored either.
    r = api.request("POST", "/bids/batch", json=batch_body("bid", [good, forged, also_good, expired, good]))
    expect_error(r, 400, "bids.1.signature")
    fields = {item["field"] for item in r.json()["detail"]}
    assert fields == {"bids.1.signature", "bids.3.deadline", "bids.4.signature"}, r.json()
    assert "duplicate of message 0" in next(i["reason"] for i in r.json()["detail"] if i["field"] == "bids.4.signature")
    for message, _ in (good, forged, also_good, expired):
        api.refused[api.digest(message)] = "bid"

    # Each bid fits the provider's stake alone, but together they reserve more than it covers.
    over = [m.bid(providers[0], capacity=2) for _ in range(3)]
    r = api.request("POST", "/bids/batch", json=batch_body("bid", over))
    assert expect_error(r, 400, "bids.2.capacity").endswith("at most 0 units")
    assert {item["field"] for item in r.json()["detail"]} == {"bids.2.capacity"}
    for bid, _ in over:
        api.refused[api.digest(bid)] = "bid"

    # A batch repeating an accepted message is a conflict (409) and stores nothing new.
    accepted = m.bid(providers[1], capacity=1)
    api.accept(*accepted)
    fresh = m.bid(providers[1], capacity=1)
    expect_error(api.request("POST", "/bids/batch", json=batch_body("bid", [fresh, accepted])), 409, "bids.1.signature")
    api.refused[api.digest(fresh[0])] = "bid"

    # Schema errors name the message too; an empty or oversized batch is refused.
    body = batch_body("bid", [m.bid(providers[1], capacity=1)])
    body["bids"][0]["capacity"] = -1
    expect_error(api.request("POST", "/bids/batch", json=body), 422, "bids.0.capacity")
    expect_error(api.request("POST", "/bids/batch", json={"bids": []}), 422, "bids")
    expect_error(api.request("POST", "/orders/batch", json={"orders": [{}] * 1001}), 422, "orders")
    expect_error(api.request("POST", "/orders/batch", json=[]), 422, "body")
    api.verify_store()


def test_an_unreachable_chain_is_a_503_not_a_500(market, providers, chain, book_path, tmp_path):
    from fastapi.testclient import TestClient

    from underbid.matcher.api import create_app
    from underbid.matcher.service import build_matcher

    from .conftest import free_port

    market.stake_provider(providers[0], 4)
    matcher = build_matcher(chain.provider.uri, book_path, tmp_path / "m.db", dev_account(MATCHER))
    bid = order_body(*market.bid(providers[0], capacity=1))
    # The node goes away after start-up: nothing listens at the RPC address any more.
    matcher.chain.w3.provider.endpoint_uri = f"http://127.0.0.1:{free_port()}"
    matcher.chain.cache.invalidate()
    with TestClient(create_app(matcher)) as http:
        r = http.post("/bids", json=bid)
        assert r.status_code == 503, r.text
        (detail,) = r.json()["detail"]
        assert detail["field"] == "chain" and "unreachable" in detail["reason"]
        assert http.get(f"/bids/{'0x' + 'ab' * 32}").status_code == 404  # the store still answers
    matcher.store.close()


def test_round_close_errors_never_escape_as_500(tmp_path):
    """Whatever a close raises (submission, RPC, timeout or solver errors) ends that close as
    `failed` in GET /rounds/{id}: POST /rounds/close answered 202 before it ran."""
    from types import SimpleNamespace

    from fastapi.testclient import TestClient
    from web3.exceptions import TimeExhausted, Web3RPCError

    from underbid.matcher.api import create_app
    from underbid.matcher.store import RoundState, StoredRound
    from underbid.matcher.submission import SubmissionError

    raised = [SubmissionError("settle reverted"), TimeExhausted("no receipt"), Web3RPCError("already known"),
              RuntimeError("solver failed"), ValueError("x" * 5000)]
    started = threading.Event()

    def close_round():
        started.set()
        raise raised.pop(0)

    matcher = SimpleNamespace(
        intake_round=lambda: 7, leads=lambda: True, close_round=close_round,
        round=lambda i: StoredRound(id=i, state=RoundState.OPEN, opened_at=1.0, cleared_at=None, confirmed_at=None,
                                    clearing=None, error=None, closed_at=None, batches=()) if i == 7 else None,
    )
    with TestClient(create_app(matcher, admin_token="t"), raise_server_exceptions=False) as http:
        for expected in list(raised):
            r = http.post("/rounds/close", headers={"Authorization": "Bearer t"})
            assert r.status_code == 202 and r.json()["round_id"] == 7, r.text
            deadline = time.monotonic() + 10
            while (close := http.get("/rounds/7").json()["close"])["status"] == "running":
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert close["status"] == "failed" and type(expected).__name__ in close["error"], close
            assert len(close["error"]) <= 2000


@on_both_stores
def test_a_cancel_requested_bid_in_a_market_no_order_reaches_is_dropped_at_the_close(
    market, settlement, providers, api, matcher_process
):
    """A round reads only markets where both sides are open, yet a bid alone in its market whose
    provider asked to cancel its nonce must not keep holding the provider's stake at intake:
    the close re-checks such markets' messages too (while there are few, IDLE_CANCEL_CHECKS)."""
    m = market
    m.stake_provider(providers[0], 2)
    bid, signature = m.bid(providers[0], capacity=2)
    digest = api.accept(bid, signature)
    # The stake is reserved: a second bid of 2 units does not fit.
    api.refuse(*m.bid(providers[0], capacity=2), 400, "capacity")
    settlement.requestCancel([bid.nonce], sender=providers[0])
    report = matcher_process.close_round().json()
    assert report["state"] == "open"  # nothing to match
    view = api.request("GET", f"/bids/{digest}").json()
    assert view["status"] == "dropped" and "cancellation" in view["reason"]
    api.accept(*m.bid(providers[0], capacity=2))


@pytest.mark.parametrize("matcher_db", ["postgres"], indirect=True)
def test_lost_database_sessions_answer_503_store_then_recover(matcher_process, matcher_db):
    """Every Postgres session of the matcher is killed on the server (a failover of the database,
    an administrator's pg_terminate_backend): the requests that meet a dead pooled connection
    answer 503 naming the store, never a 500, and the pools reconnect by themselves."""
    signer = "0x" + "11" * 20
    with matcher_process.client() as http:
        assert http.get(f"/bids?signer={signer}").status_code == 200
        with psycopg.connect(matcher_db, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()[0]
        assert killed >= 1
        answers = [http.get(f"/bids?signer={signer}") for _ in range(20)]
        failed = [answer for answer in answers if answer.status_code != 200]
        assert all(answer.status_code == 503 and answer.json()["detail"][0]["field"] == "store" for answer in failed), [
            (answer.status_code, answer.text) for answer in failed
        ]
        assert answers[-1].status_code == 200
