"""Randomized invariant test: DESIGN.md "Invariants" 1-4 under random action sequences, on anvil.

A hypothesis state machine drives the deployed contracts with random sequences of deposit,
withdraw, settle (valid rounds, and invalid ones that must revert), claim, close, heartbeat, time
advance, reportFault, mintCredits, redeem, stake, requestUnstake and withdrawUnbonded. It keeps an
exact integer model of every balance the protocol moves, checks each transaction's outcome and
events against it, and after every step checks, against the chain, with no tolerance:

1. credit conservation: credit supply == buyer escrow (free + locked) + credits held by users, and
   the settlement's credit balance == all escrow;
2. UBT conservation: UBT supply == genesis + BME mints - BME burns - burned part of slashes;
3. per lease: paid so far + still locked <= units * price * duration / 3600 (and the lease's
   payments add up to exactly that, as Leases.sol promises); per order and bid: units filled
   (summed from LeaseOpened events) <= units or capacity, and `remainingOf` agrees;
4. per provider: locked <= staked; the settlement's UBT == sum of staked + unbonding, plus the
   matcher bonds it also holds (MatcherBonds.sol), and nothing else.

Time is deterministic: every transaction is mined at the model's clock (`chain.pending_timestamp`)
and the clock moves only in the advance rules, so expected accruals are exact. Ape isolates test
functions, not hypothesis examples, so each example starts from its own chain snapshot, taken after
a shared setup, and reverts to it in `teardown`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import requests
from ape.exceptions import ContractLogicError
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from web3.exceptions import ContractLogicError as Web3ContractLogicError

from underbid.eip712 import Bid, Order

from ..conftest import A100, H100, HOUR, UBC, UBT
from ..reverts import reverts

BPS = 10_000
MAX_UINT = 2**256 - 1
MARKETS = (H100, A100)
# Per-test-run unique nonces (conftest's own counter starts at 1).
_nonces = itertools.count(1_000_000)

# Custom error selector ("0x" + 8 hex digits) -> name, filled from the deployed contracts' ABIs.
ERRORS: dict[str, str] = {}

# 50 x 40 = 2,000 steps: ~75-100 s on 2 busy cores. A step is one to three anvil transactions
# (~40 ms each through ape) plus one batched read of ~60 view calls for the invariants (~8 ms).
MAX_EXAMPLES = 50
STEPS = 40


# ----------------------------------------------------------------------------------------------
# Model records
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Msg:
    """A signed order or bid, and the units that leases opened from it (LeaseOpened events)."""

    kind: str  # "order" or "bid"
    message: Any  # Order | Bid
    signature: bytes
    digest: bytes
    number: int
    filled: int = 0

    @property
    def signer(self) -> str:
        return self.message.signer

    @property
    def total(self) -> int:
        return self.message.units if self.kind == "order" else self.message.capacity

    @property
    def left(self) -> int:
        return self.total - self.filled

    def __repr__(self) -> str:
        m = self.message
        if self.kind == "order":
            return f"order#{self.number}(units={m.units}, duration={m.duration}, maxPrice={m.max_price})"
        return f"bid#{self.number}(capacity={m.capacity}, price={m.price}, maxDuration={m.max_duration})"

    def _repr_pretty_(self, printer, cycle) -> None:  # how hypothesis prints draws
        printer.text(repr(self))


@dataclass(eq=False)
class LeaseM:
    """The model of one lease. `paid`/`paid_until`/`last_heartbeat` are the model's expectations;
    `chain_paid`/`chain_refund` are summed from the contract's LeasePaid/LeaseClosed events."""

    lease_id: bytes
    number: int
    buyer: str
    provider: str
    units: int
    price: int
    duration: int
    start: int
    end: int
    paid_until: int
    last_heartbeat: int
    paid: int = 0
    closed: bool = False
    chain_paid: int = 0
    chain_refund: int = 0

    @property
    def cost(self) -> int:
        """units * price * duration / 3600, rounded down: what settle locked for the lease."""
        return self.units * self.price * self.duration // HOUR

    def accrued(self, t: int) -> int:
        t = min(t, self.end)
        return 0 if t <= self.start else self.units * self.price * (t - self.start) // HOUR

    def __repr__(self) -> str:
        return f"lease#{self.number}"

    def _repr_pretty_(self, printer, cycle) -> None:  # how hypothesis prints draws
        printer.text(repr(self))


@dataclass
class Batch:
    """One settle call being built, with the resources its matches leave free."""

    orders: list[Msg]
    bids: list[Msg]
    matches: list[tuple[int, int, int]]
    prices: dict[str, int]
    left: dict[bytes, int]
    free_escrow: dict[str, int]
    free_stake: dict[str, int]
    pairs: set[tuple[bytes, bytes]] = field(default_factory=set)


@dataclass
class Env:
    chain: Any
    ubt: Any
    credit: Any
    bme: Any
    oracle: Any
    settlement: Any
    domain: Any
    params: Any
    deployer: Any
    matcher: Any
    buyers: list
    providers: list
    outsider: Any
    start: dict  # chain state right after the shared setup
    reader: ChainReader


class ChainReader:
    """Reads many view functions in one raw JSON-RPC batch of eth_calls at the head block.

    web3's contract layer spends ~10 ms of Python per call (ABI lookups, selector hashing); this
    encodes with precomputed selectors and eth_abi, so a check of ~60 reads costs one round trip.
    """

    def __init__(self, uri: str, contracts: dict[str, Any]) -> None:
        self.uri = uri
        self.session = requests.Session()
        self.methods = {
            (name, m.name): (
                str(c.address),
                keccak(text=m.selector)[:4],
                [x.canonical_type for x in m.inputs],
                [x.name for x in m.outputs],
                [x.canonical_type for x in m.outputs],
            )
            for name, c in contracts.items()
            for m in c.contract_type.view_methods
        }

    def read(self, calls: list[tuple]) -> dict[tuple, Any]:
        """Maps each (contract, function, *args) to its result; several outputs become a dict."""
        if not calls:
            return {}  # an empty JSON-RPC batch is an invalid request
        body = []
        for n, (contract, fn, *args) in enumerate(calls):
            address, selector, in_types, _, _ = self.methods[contract, fn]
            args = [bytes.fromhex(a[2:]) if t.startswith("bytes") and isinstance(a, str) else a for t, a in zip(in_types, args)]
            data = "0x" + (selector + abi_encode(in_types, args)).hex()
            body.append({"jsonrpc": "2.0", "id": n, "method": "eth_call", "params": [{"to": address, "data": data}, "latest"]})
        replies = sorted(self.session.post(self.uri, json=body, timeout=60).json(), key=lambda r: r["id"])
        out = {}
        for call, reply in zip(calls, replies, strict=True):
            assert "result" in reply, f"eth_call {call} failed: {reply.get('error')}"
            _, _, _, names, out_types = self.methods[call[0], call[1]]
            values = abi_decode(out_types, bytes.fromhex(reply["result"][2:]))
            out[call] = dict(zip(names, values, strict=True)) if len(values) > 1 else values[0]
        return out


def _error(name: str) -> frozenset[str]:
    return frozenset({name})


class InvalidSettleAccepted(AssertionError):
    pass


# ----------------------------------------------------------------------------------------------
# The state machine
# ----------------------------------------------------------------------------------------------


class ProtocolMachine(RuleBasedStateMachine):
    env: Env  # set by the test before the run

    def __init__(self) -> None:
        super().__init__()
        e = self.env
        self.snapshot = e.chain.snapshot()
        p = e.params
        self.spu = p.stake_per_unit
        self.interval, self.grace = p.heartbeat_interval, p.heartbeat_grace
        self.accounts = {str(a.address): a for a in [e.deployer, e.matcher, *e.buyers, *e.providers, e.outsider]}
        self.everyone = list(self.accounts)
        self.buyer_addrs = [str(b.address) for b in e.buyers]
        self.provider_addrs = [str(p.address) for p in e.providers]
        s = e.start
        self.t = s["t"]
        self.oracle_at = s["oracle_at"]
        self.credits = dict(s["credits"])
        self.ubt_bal = dict(s["ubt_bal"])
        self.escrow = {b: list(v) for b, v in s["escrow"].items()}
        self.stakes = {p: list(v) for p, v in s["stakes"].items()}  # staked, locked, unbonding, unbondingEnd
        self.ubt_minted, self.ubt_burned = s["ubt_minted"], s["ubt_burned"]
        self.credits_minted, self.credits_burned = s["credits_minted"], s["credits_burned"]
        self.slash_burned = s["slash_burned"]
        self.matcher_bond = s["matcher_bond"]
        self.msgs: dict[bytes, Msg] = {}
        self.leases: dict[bytes, LeaseM] = {}
        self.lease_order: list[LeaseM] = []
        self.round = 0
        self.settled_rounds: list[int] = []
        self.msg_count = 0
        self.failure: str | None = None

    def teardown(self) -> None:
        self.env.chain.restore(self.snapshot)

    # -- transactions ------------------------------------------------------------------------

    def _send(self, what: str, expected: frozenset[str] | None, method, *args, sender):
        """Sends a transaction mined at the model clock.

        `expected` None: it must succeed; returns the ape receipt. Otherwise it must revert with
        one of the named errors; returns None. The model is then left untouched, and the
        invariant checks that follow prove the chain did not change either.
        """
        if expected is not None:
            name = self._revert_name(method, *args, sender=sender)
            if name is None:
                raise AssertionError(f"{what} would succeed, but it must revert with one of {sorted(expected)}")
            assert name in expected, f"{what} reverts with {name}, expected one of {sorted(expected)}"
            self._send_reverting(what, method, *args, sender=sender)
            return None
        self.env.chain.pending_timestamp = self.t
        try:
            return method(*args, sender=sender)
        except ContractLogicError as err:
            raise AssertionError(f"{what} reverted unexpectedly with {type(err).__name__}: {err}") from err

    # Reverting transactions bypass ape, which fetches and prints a full debug trace for each
    # (seconds apiece): the error name comes from an eth_call at the head block (mined at the
    # model clock, like the transaction), then the transaction itself is mined and must fail.

    def _raw_tx(self, method, *args, sender) -> dict:
        return {
            "from": str(sender.address),
            "to": str(method.contract.address),
            "data": "0x" + bytes(method.encode_input(*args)).hex(),
            "gas": 10_000_000,
            "maxFeePerGas": 10**11,
            "maxPriorityFeePerGas": 0,
        }

    def _revert_name(self, method, *args, sender) -> str | None:
        """The custom error `method(*args)` from `sender` reverts with now, or None if it succeeds."""
        tx = self._raw_tx(method, *args, sender=sender)
        try:
            self.env.chain.provider.web3.eth.call(tx, "latest")
        except Web3ContractLogicError as err:
            data = err.data if isinstance(err.data, str) else ""
            return ERRORS.get(data[:10], f"unknown revert {data or err}")
        return None

    def _send_reverting(self, what: str, method, *args, sender) -> None:
        w3 = self.env.chain.provider.web3
        self.env.chain.pending_timestamp = self.t
        tx_hash = w3.eth.send_transaction(self._raw_tx(method, *args, sender=sender))
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
        block = w3.eth.get_block(receipt["blockNumber"])
        assert block["timestamp"] == self.t, f"{what} mined at {block['timestamp']}, model clock {self.t}"
        assert receipt["status"] == 0, f"{what} was mined successfully, but its eth_call reverted"

    def _amount(self, data, upper: int, label: str) -> int:
        """1..upper eight times in ten; otherwise 0 or upper + 1, which must revert."""
        kind = data.draw(st.integers(0, 9), label=f"{label}: 0-7 valid, 8 zero, 9 too much")
        if kind == 8:
            return 0
        if kind == 9:
            return upper + 1
        return data.draw(st.integers(1, max(upper, 1)), label=label)

    def _sender(self, address: str):
        return self.accounts[address]

    # -- model helpers -----------------------------------------------------------------------

    def _open(self) -> list[LeaseM]:
        return [lease for lease in self.lease_order if not lease.closed]

    def _free_stake(self, provider: str) -> int:
        staked, locked, _, _ = self.stakes[provider]
        return staked - locked

    def _reportable_at(self, lease: LeaseM) -> int | None:
        stop = lease.last_heartbeat + self.interval
        return None if stop >= lease.end else stop + self.grace + 1

    def _fault_pending(self, lease: LeaseM) -> bool:
        """A fault is reportable: the lease can only end through reportFault (claim/close revert)."""
        reportable = self._reportable_at(lease)
        return reportable is not None and self.t >= reportable

    def _pay_up_to(self, lease: LeaseM, until: int, paid_events: list) -> int:
        until = min(until, lease.last_heartbeat + self.interval, lease.end)
        if until <= lease.paid_until:
            return 0
        amount = lease.accrued(until) - lease.accrued(lease.paid_until)
        lease.paid_until = until
        lease.paid += amount
        self.escrow[lease.buyer][1] -= amount
        paid_events.append((lease.lease_id, lease.provider, amount, until))
        return amount

    def _settle_and_close(self, lease: LeaseM, until: int, paid_events: list, closed_events: list) -> int:
        paid = self._pay_up_to(lease, until, paid_events)
        refund = lease.accrued(lease.end) - lease.accrued(lease.paid_until)
        lease.closed = True
        self.escrow[lease.buyer][1] -= refund
        self.escrow[lease.buyer][0] += refund
        collateral = lease.units * self.spu
        self.stakes[lease.provider][1] -= collateral
        closed_events.append((lease.lease_id, refund, collateral))
        return paid

    def _check_lease_events(self, receipt, paid_events: list, closed_events: list) -> None:
        s = self.env.settlement
        # Event fields are read from `event_arguments`: on an ape log, `.provider` is the RPC provider.
        paid_logs = [x.event_arguments for x in receipt.decode_logs(s.LeasePaid)]
        closed_logs = [x.event_arguments for x in receipt.decode_logs(s.LeaseClosed)]
        got_paid = [(bytes(x["leaseId"]), x["provider"], x["amount"], x["paidUntil"]) for x in paid_logs]
        got_closed = [(bytes(x["leaseId"]), x["refund"], x["collateral"]) for x in closed_logs]
        for lease_id, _, amount, _ in got_paid:
            self.leases[lease_id].chain_paid += amount
        for lease_id, refund, _ in got_closed:
            self.leases[lease_id].chain_refund += refund
        assert got_paid == paid_events, f"LeasePaid events {got_paid} != model {paid_events}"
        assert got_closed == closed_events, f"LeaseClosed events {got_closed} != model {closed_events}"

    def _draw_lease(self, data, prefer) -> LeaseM:
        """A lease for which `prefer` holds nine times in ten (when there is one), else any lease."""
        preferred = [x for x in self.lease_order if prefer(x)]
        if preferred and data.draw(st.integers(0, 9), label="preferred lease?") < 9:
            return data.draw(st.sampled_from(preferred), label="lease")
        return data.draw(st.sampled_from(self.lease_order), label="lease")

    def _running(self, lease: LeaseM) -> bool:
        return not lease.closed and not self._fault_pending(lease)

    # -- signing -----------------------------------------------------------------------------

    def _sign(self, kind: str, message, key_owner: str | None = None) -> Msg:
        key = self._sender(key_owner or message.signer).private_key
        self.msg_count += 1
        return Msg(kind, message, message.sign(key, self.env.domain), message.digest(self.env.domain), self.msg_count)

    def _new_order(self, data, **given) -> Msg:
        """A freshly signed order; the fields not given are drawn."""
        draws = dict(
            buyer=lambda: data.draw(st.sampled_from(self.buyer_addrs), label="buyer"),
            market=lambda: data.draw(st.sampled_from(MARKETS), label="market"),
            units=lambda: data.draw(st.integers(1, 4), label="units"),
            duration=lambda: data.draw(st.integers(30, 1800) | st.sampled_from([60, 61, 3600]), label="duration"),
            max_price=lambda: data.draw(st.integers(UBC, 5 * UBC), label="maxPrice"),
            deadline=lambda: self.t + data.draw(st.integers(0, 900), label="deadline - now"),
        )
        values = {name: given[name] if name in given else draw() for name, draw in draws.items()}
        return self._sign("order", Order(**values, nonce=next(_nonces)))

    def _new_bid(self, data, **given) -> Msg:
        """A freshly signed bid; the fields not given are drawn."""
        draws = dict(
            provider=lambda: data.draw(st.sampled_from(self.provider_addrs), label="provider"),
            market=lambda: data.draw(st.sampled_from(MARKETS), label="market"),
            capacity=lambda: data.draw(st.integers(1, 6), label="capacity"),
            price=lambda: data.draw(st.integers(UBC // 2, 4 * UBC), label="price"),
            max_duration=lambda: data.draw(st.integers(60, 3600), label="maxDuration"),
            deadline=lambda: self.t + data.draw(st.integers(0, 900), label="deadline - now"),
        )
        values = {name: given[name] if name in given else draw() for name, draw in draws.items()}
        return self._sign("bid", Bid(**values, nonce=next(_nonces)))

    def _pick(self, data, kind: str, repeats: bool = True) -> list[Msg]:
        """1-3 entries: new messages, live ones from earlier rounds, or a repeat of an entry."""
        live = [m for m in self.msgs.values() if m.kind == kind and m.left > 0 and m.message.deadline >= self.t]
        entries: list[Msg] = []
        for _ in range(data.draw(st.integers(1, 3), label=f"{kind}s")):
            fresh = [m for m in live if repeats or m not in entries]
            options = ["new"] + (["live"] if fresh else []) + (["repeat"] if entries and repeats else [])
            choice = data.draw(st.sampled_from(options), label=f"{kind} source")
            if choice == "live":
                entries.append(data.draw(st.sampled_from(fresh), label=f"live {kind}"))
            elif choice == "repeat":
                entries.append(data.draw(st.sampled_from(entries), label=f"repeated {kind}"))
            else:
                entries.append(self._new_order(data) if kind == "order" else self._new_bid(data))
        return entries

    # -- settle ------------------------------------------------------------------------------

    def _random_batch(self, data, repeats: bool = True) -> Batch:
        """New, live (partly filled in earlier rounds) and repeated entries; a uniform price per
        market between its cheapest bid and its highest order limit."""
        orders, bids = self._pick(data, "order", repeats), self._pick(data, "bid", repeats)
        prices: dict[str, int] = {}
        for market in MARKETS:
            asks = [b.message.price for b in bids if b.message.market == market]
            limits = [o.message.max_price for o in orders if o.message.market == market]
            if asks and limits and min(asks) <= max(limits):
                prices[market] = data.draw(st.integers(min(asks), max(limits)), label="clearing price")
        return self._match(data, orders, bids, prices)

    def _paired_batch(self, data, repeat: bool = False) -> Batch:
        """1-3 fresh order/bid pairs that can trade with each other at their market's price."""
        prices: dict[str, int] = {}
        orders, bids = [], []
        for _ in range(data.draw(st.integers(1, 3), label="pairs")):
            market = data.draw(st.sampled_from(MARKETS), label="market")
            if market not in prices:
                prices[market] = data.draw(st.integers(UBC, 3 * UBC), label="clearing price")
            price = prices[market]
            order = self._new_order(data, market=market, max_price=data.draw(st.integers(price, 5 * UBC), label="maxPrice"))
            bid = self._new_bid(data, market=market, price=data.draw(st.integers(UBC // 2, price), label="bid price"),
                                max_duration=data.draw(st.integers(order.message.duration, 3600), label="maxDuration"))
            orders.append(order)
            bids.append(bid)
        if repeat and data.draw(st.booleans(), label="list a message twice?"):
            # The same signed order (or bid) once more, with a fresh counterpart: a valid batch as
            # long as both entries together stay within its units (or capacity).
            k = data.draw(st.integers(0, len(orders) - 1), label="pair")
            o, b = orders[k], bids[k]
            if data.draw(st.booleans(), label="order twice?"):
                orders.append(o)
                bids.append(self._new_bid(data, market=o.message.market, price=b.message.price,
                                          max_duration=o.message.duration))
            else:
                bids.append(b)
                orders.append(self._new_order(data, market=b.message.market, max_price=prices[b.message.market],
                                              duration=data.draw(st.integers(30, b.message.max_duration), label="duration")))
        return self._match(data, orders, bids, prices, paired=True)

    def _batch(self, data) -> Batch:
        if data.draw(st.booleans(), label="paired?"):
            return self._paired_batch(data, repeat=True)
        return self._random_batch(data)

    def _match(self, data, orders: list[Msg], bids: list[Msg], prices: dict[str, int], paired: bool = False) -> Batch:
        """Random matches within units, capacity, free stake and free escrow (a valid batch)."""
        batch = Batch(
            orders, bids, [], prices,
            left={m.digest: m.left for m in orders + bids},
            free_escrow={b: self.escrow[b][0] for b in self.buyer_addrs},
            free_stake={p: self._free_stake(p) for p in self.provider_addrs},
        )
        for oi, o in enumerate(orders):
            for bi, b in enumerate(bids):
                om, bm = o.message, b.message
                price = prices.get(om.market)
                if om.market != bm.market or price is None or not bm.price <= price <= om.max_price:
                    continue
                if om.duration > bm.max_duration or (o.digest, b.digest) in batch.pairs:
                    continue
                affordable = ((batch.free_escrow[om.buyer] + 1) * HOUR - 1) // (price * om.duration)
                cap = min(batch.left[o.digest], batch.left[b.digest], batch.free_stake[bm.provider] // self.spu, affordable)
                least = 1 if paired and oi == bi else 0  # a fresh pair trades whenever it can
                units = data.draw(st.integers(least, cap), label=f"units {o} x {b}") if cap > 0 else 0
                if units:
                    self._add_match(batch, oi, bi, units)
        return batch

    def _add_match(self, batch: Batch, oi: int, bi: int, units: int) -> None:
        o, b = batch.orders[oi], batch.bids[bi]
        price = batch.prices[o.message.market]
        batch.matches.append((oi, bi, units))
        batch.left[o.digest] = batch.left.get(o.digest, o.left) - units
        batch.left[b.digest] = batch.left.get(b.digest, b.left) - units
        batch.free_escrow[o.signer] -= units * price * o.message.duration // HOUR
        batch.free_stake[b.signer] -= units * self.spu
        batch.pairs.add((o.digest, b.digest))

    def _call(self, round_id: int, batch_no: int, final: bool, batch: Batch, sender=None):
        return dict(
            args=(
                (round_id, batch_no, final),
                [o.message.as_call_tuple() for o in batch.orders],
                [o.signature for o in batch.orders],
                [b.message.as_call_tuple() for b in batch.bids],
                [b.signature for b in batch.bids],
                list(batch.matches),
                list(batch.prices.items()),
            ),
            sender=sender or self.env.matcher,
        )

    def _sub_batch(self, batch: Batch, matches: list[tuple[int, int, int]]) -> Batch:
        """The part of `batch` that `matches` use, re-indexed (a message used up in an earlier
        batch would fail its nonce check if listed again)."""
        orders = list(dict.fromkeys(batch.orders[oi] for oi, _, _ in matches))
        bids = list(dict.fromkeys(batch.bids[bi] for _, bi, _ in matches))
        new = [(orders.index(batch.orders[oi]), bids.index(batch.bids[bi]), u) for oi, bi, u in matches]
        used = {o.message.market for o in orders}
        return Batch(orders, bids, new, {m: p for m, p in batch.prices.items() if m in used}, {}, {}, {})

    def _expected_opened(self, batch: Batch) -> list:
        out = []
        for oi, bi, units in batch.matches:
            o, b = batch.orders[oi], batch.bids[bi]
            out.append((o.digest, b.digest, units, batch.prices[o.message.market]))
        return sorted(out)

    def _apply_opened(self, receipts, round_id: int, known: dict[bytes, Msg]) -> list:
        """Adds the leases the receipts opened to the model; returns (order, bid, units, price)."""
        s = self.env.settlement
        opened = []
        for receipt in receipts:
            for log in receipt.decode_logs(s.LeaseOpened):
                ev = log.event_arguments
                od, bd = bytes(ev["orderDigest"]), bytes(ev["bidDigest"])
                order, bid = known[od], known[bd]
                duration = order.message.duration
                lease = LeaseM(
                    bytes(ev["leaseId"]), len(self.lease_order) + 1, ev["buyer"], ev["provider"], ev["units"],
                    ev["price"], duration, ev["start"], ev["end"], paid_until=ev["start"], last_heartbeat=ev["start"],
                )
                got = (ev["round"], ev["start"], ev["end"], ev["buyer"], ev["provider"])
                want = (round_id, self.t, self.t + duration, order.signer, bid.signer)
                assert got == want, f"{lease}: LeaseOpened (round, start, end, buyer, provider) {got} != {want}"
                self.leases[lease.lease_id] = lease
                self.lease_order.append(lease)
                self.escrow[lease.buyer][0] -= lease.cost
                self.escrow[lease.buyer][1] += lease.cost
                self.stakes[lease.provider][1] += lease.units * self.spu
                order.filled += lease.units
                bid.filled += lease.units
                opened.append((od, bd, ev["units"], ev["price"]))
        for digest, msg in known.items():
            self.msgs.setdefault(digest, msg)
        return sorted(opened)

    @initialize(data=st.data())
    def open_first_leases(self, data) -> None:
        """Every example starts with a settled round (swarm testing may switch `settle` off)."""
        self._settle_valid(data, self._paired_batch(data, repeat=True))

    @rule(data=st.data())
    def settle(self, data) -> None:
        self._settle_valid(data, self._batch(data))

    @rule(data=st.data())
    def settle_invalid(self, data) -> None:
        # One broken rule at a time, mostly on a paired batch (it has matches to break).
        if data.draw(st.integers(0, 3), label="random base batch?") == 0:
            batch = self._random_batch(data, repeats=False)
        else:
            batch = self._paired_batch(data)
        self.round += 1
        self._settle_invalid(data, batch, self.round, {m.digest: m for m in batch.orders + batch.bids})

    def _settle_valid(self, data, batch: Batch) -> None:
        """Settles `batch` in one call, or split in two batches of one round; it must succeed."""
        s = self.env.settlement
        self.round += 1
        round_id = self.round
        known = {m.digest: m for m in batch.orders + batch.bids}
        if len(batch.matches) >= 2 and data.draw(st.booleans(), label="two batches?"):
            cut = data.draw(st.integers(1, len(batch.matches) - 1), label="cut")
            parts = [self._sub_batch(batch, batch.matches[:cut]), self._sub_batch(batch, batch.matches[cut:])]
        else:
            parts = [batch]
            if len(set(batch.orders)) < len(batch.orders) or len(set(batch.bids)) < len(batch.bids):
                # A message listed twice, its fills within its units or capacity across both entries.
                # The contract may refuse such a batch outright (then nothing may change: the
                # invariants check that); if it accepts it, it must record every fill.
                call = self._call(round_id, 0, True, batch)
                name = self._revert_name(s.settle, *call["args"], sender=call["sender"])
                if name is not None:
                    what = f"settle listing a message twice ({name})"
                    self._send_reverting(what, s.settle, *call["args"], sender=call["sender"])
                    return
        receipts = []
        for n, part in enumerate(parts):
            call = self._call(round_id, n, n == len(parts) - 1, part)
            what = f"settle round {round_id} batch {n}"
            receipts.append(self._send(what, None, s.settle, *call["args"], sender=call["sender"]))
        self.settled_rounds.append(round_id)
        opened = self._apply_opened(receipts, round_id, known)
        assert opened == self._expected_opened(batch), f"leases opened {opened} != matches {self._expected_opened(batch)}"
        prices = self.env.reader.read([("settlement", "clearingPrice", round_id, m) for m in batch.prices])
        # A split round sends each batch only the prices of the markets it trades in, so a market
        # priced but left without a match is never sent, and no price is stored for it.
        sent = {market: price for part in parts for market, price in part.prices.items()}
        for market in batch.prices:
            assert prices["settlement", "clearingPrice", round_id, market] == sent.get(market, 0), "stored clearing price"

    def _settle_invalid(self, data, batch: Batch, round_id: int, known: dict[bytes, Msg]) -> None:
        """Breaks one rule of `settle`; the call must revert (and change nothing)."""
        mutations = [self._mut_expired, self._mut_bad_signature, self._mut_not_matcher, self._mut_bad_index,
                     self._mut_duration, self._mut_underfunded, self._mut_understaked, self._mut_market_mismatch]
        if batch.matches:
            mutations += [self._mut_overfill, self._mut_overfill_listed_twice, self._mut_price_below_bid,
                          self._mut_price_above_max]
        if self._used_up():
            mutations.append(self._mut_used_nonce)
        if self.settled_rounds:
            mutations.append(self._mut_settled_round)
        mutation = data.draw(st.sampled_from(mutations), label="mutation")
        result = mutation(data, batch, round_id)
        if result is None:  # not applicable here (no signer has the resources it needs)
            result = self._mut_expired(data, batch, round_id)
        what, expected, round_id, sender = result
        known.update({m.digest: m for m in batch.orders + batch.bids})
        call = self._call(round_id, 0, True, batch, sender)
        settle = self.env.settlement.settle
        name = self._revert_name(settle, *call["args"], sender=call["sender"])
        if name is not None:
            assert expected is None or name in expected, (
                f"invalid settle ({what}) reverts with {name}, expected {sorted(expected)}"
            )
            self._send_reverting(f"invalid settle ({what})", settle, *call["args"], sender=call["sender"])
            return
        # Accepted: record what really happened, so the invariant checks show the damage, then fail.
        receipt = self._send(f"invalid settle ({what})", None, settle, *call["args"], sender=call["sender"])
        self.settled_rounds.append(round_id)
        self._apply_opened([receipt], round_id, known)
        self.failure = f"invalid settle accepted: {what}; matches {batch.matches}"

    # Each mutation edits `batch` and returns (description, allowed errors or None for any, round, sender).

    def _resources(self, batch: Batch, buyer_needs: int = 0, stake_needs: int = 0):
        buyers = [b for b in self.buyer_addrs if batch.free_escrow[b] >= buyer_needs]
        providers = [p for p in self.provider_addrs if batch.free_stake[p] >= stake_needs]
        return buyers, providers

    def _price_for(self, data, batch: Batch, market: str) -> int:
        if market not in batch.prices:
            batch.prices[market] = data.draw(st.integers(UBC, 3 * UBC), label="extra market price")
        return batch.prices[market]

    def _mut_expired(self, data, batch, round_id):
        if data.draw(st.booleans(), label="expired order?"):
            batch.orders.append(self._new_order(data, deadline=self.t - 1))
            return "an order past its deadline", _error("OrderExpired"), round_id, None
        batch.bids.append(self._new_bid(data, deadline=self.t - 1))
        return "a bid past its deadline", _error("BidExpired"), round_id, None

    def _mut_bad_signature(self, data, batch, round_id):
        order = self._new_order(data, buyer=self.buyer_addrs[0])
        forged = self._sign("order", order.message, key_owner=self.buyer_addrs[1])
        batch.orders.append(forged)
        return "an order signed by another key", _error("SignerMismatch"), round_id, None

    def _mut_not_matcher(self, data, batch, round_id):
        return "sent by an account with no matcher bond", _error("MatcherNotBonded"), round_id, self.env.outsider

    def _mut_bad_index(self, data, batch, round_id):
        batch.matches.append((len(batch.orders), 0, 1))
        return "a match index out of range", _error("MatchIndexOutOfRange"), round_id, None

    def _mut_settled_round(self, data, batch, round_id):
        old = data.draw(st.sampled_from(self.settled_rounds), label="settled round")
        return f"round {old} again", _error("RoundAlreadySettled"), old, None

    def _used_up(self) -> list[Msg]:
        """Messages filled completely (their nonce is consumed), still before their deadline."""
        return [m for m in self.msgs.values() if m.left == 0 and m.message.deadline >= self.t]

    def _mut_used_nonce(self, data, batch, round_id):
        msg = data.draw(st.sampled_from(self._used_up()), label="used-up message")
        (batch.orders if msg.kind == "order" else batch.bids).append(msg)
        return f"{msg}, already filled completely", _error("NonceUsed"), round_id, None

    def _mut_price_below_bid(self, data, batch, round_id):
        oi, bi, _ = data.draw(st.sampled_from(batch.matches), label="match")
        market = batch.orders[oi].message.market
        top = max(batch.bids[b].message.price for o, b, _ in batch.matches if batch.orders[o].message.market == market)
        batch.prices[market] = top - 1
        return "a clearing price below a winning bid", _error("BidAboveClearingPrice"), round_id, None

    def _mut_price_above_max(self, data, batch, round_id):
        oi, bi, _ = data.draw(st.sampled_from(batch.matches), label="match")
        market = batch.orders[oi].message.market
        low = min(batch.orders[o].message.max_price for o, b, _ in batch.matches if batch.orders[o].message.market == market)
        batch.prices[market] = low + 1
        # A higher price may exhaust a buyer's escrow on an earlier match first.
        allowed = frozenset({"ClearingPriceAboveMaxPrice", "InsufficientEscrow"})
        return "a clearing price above a served order's maxPrice", allowed, round_id, None

    def _mut_overfill(self, data, batch, round_id):
        i = data.draw(st.integers(0, len(batch.matches) - 1), label="match")
        oi, bi, units = batch.matches[i]
        o, b = batch.orders[oi], batch.bids[bi]
        extra = min(batch.left[o.digest], batch.left[b.digest]) + 1
        batch.matches[i] = (oi, bi, units + extra)
        allowed = frozenset({"OrderOverfilled", "BidOverfilled", "InsufficientEscrow", "InsufficientFreeStake"})
        return f"match {i} filled beyond its order or bid", allowed, round_id, None

    def _mut_overfill_listed_twice(self, data, batch, round_id):
        """Lists a matched order (or bid) a second time and fills the copy beyond what is left of
        the message, against a fresh counterpart that has the stake and escrow for it."""
        oi, bi, _ = data.draw(st.sampled_from(batch.matches), label="match")
        o, b = batch.orders[oi], batch.bids[bi]
        price = batch.prices[o.message.market]
        if data.draw(st.booleans(), label="order side?"):
            k = batch.left[o.digest] + 1
            cost = k * price * o.message.duration // HOUR
            _, providers = self._resources(batch, stake_needs=k * self.spu)
            if batch.free_escrow[o.signer] < cost or not providers:
                return None
            provider = data.draw(st.sampled_from(providers), label="provider")
            bid = self._new_bid(data, provider=provider, market=o.message.market, capacity=k, price=price,
                                max_duration=o.message.duration, deadline=self.t + 600)
            batch.orders.append(o)
            batch.bids.append(bid)
            batch.matches.append((len(batch.orders) - 1, len(batch.bids) - 1, k))
            return f"{o} listed twice, filled {o.filled} before + {o.left - batch.left[o.digest]} + {k}", None, round_id, None
        k = batch.left[b.digest] + 1
        duration = min(b.message.max_duration, 600)
        buyers, _ = self._resources(batch, buyer_needs=k * price * duration // HOUR)
        if batch.free_stake[b.signer] < k * self.spu or not buyers:
            return None
        buyer = data.draw(st.sampled_from(buyers), label="buyer")
        order = self._new_order(data, buyer=buyer, market=b.message.market, units=k, duration=duration,
                                max_price=price, deadline=self.t + 600)
        batch.orders.append(order)
        batch.bids.append(b)
        batch.matches.append((len(batch.orders) - 1, len(batch.bids) - 1, k))
        return f"{b} listed twice, filled {b.filled} before + {b.left - batch.left[b.digest]} + {k}", None, round_id, None

    def _fresh_pair(self, data, batch, *, units, duration, max_duration, buyer, provider, order_market=H100,
                    bid_market=H100):
        """Appends a new order and bid matched for `units` (each mutation then breaks one rule)."""
        price = self._price_for(data, batch, order_market)
        if bid_market != order_market:
            self._price_for(data, batch, bid_market)
        order = self._new_order(data, buyer=buyer, market=order_market, units=units, duration=duration,
                                max_price=price, deadline=self.t + 600)
        bid = self._new_bid(data, provider=provider, market=bid_market, capacity=units,
                            price=min(price, batch.prices[bid_market]), max_duration=max_duration, deadline=self.t + 600)
        batch.orders.append(order)
        batch.bids.append(bid)
        batch.matches.append((len(batch.orders) - 1, len(batch.bids) - 1, units))

    def _mut_duration(self, data, batch, round_id):
        price = self._price_for(data, batch, H100)
        buyers, providers = self._resources(batch, buyer_needs=price * 600 // HOUR, stake_needs=self.spu)
        if not buyers or not providers:
            return None
        self._fresh_pair(data, batch, units=1, duration=600, max_duration=599,
                         buyer=data.draw(st.sampled_from(buyers)), provider=data.draw(st.sampled_from(providers)))
        return "an order longer than its bid's maxDuration", _error("DurationTooLong"), round_id, None

    def _mut_market_mismatch(self, data, batch, round_id):
        buyers, providers = self._resources(batch, buyer_needs=5 * UBC * 600 // HOUR, stake_needs=self.spu)
        if not buyers or not providers:
            return None
        self._fresh_pair(data, batch, units=1, duration=600, max_duration=600, bid_market=A100,
                         buyer=data.draw(st.sampled_from(buyers)), provider=data.draw(st.sampled_from(providers)))
        return "an order and a bid of different markets", _error("MarketMismatch"), round_id, None

    def _mut_underfunded(self, data, batch, round_id):
        price = self._price_for(data, batch, H100)
        _, providers = self._resources(batch, stake_needs=self.spu)
        if not providers:
            return None
        buyer = data.draw(st.sampled_from(self.buyer_addrs), label="buyer")
        free = batch.free_escrow[buyer]
        duration = -(-(free + 1) * HOUR // price)  # the smallest duration whose cost exceeds `free`
        self._fresh_pair(data, batch, units=1, duration=duration, max_duration=duration, buyer=buyer,
                         provider=data.draw(st.sampled_from(providers)))
        return f"a lease costing more than {buyer}'s free escrow {free}", _error("InsufficientEscrow"), round_id, None

    def _mut_understaked(self, data, batch, round_id):
        provider = data.draw(st.sampled_from(self.provider_addrs), label="provider")
        units = batch.free_stake[provider] // self.spu + 1
        price = self._price_for(data, batch, H100)
        buyers, _ = self._resources(batch, buyer_needs=units * price * 60 // HOUR)
        if not buyers:
            return None
        self._fresh_pair(data, batch, units=units, duration=60, max_duration=60, provider=provider,
                         buyer=data.draw(st.sampled_from(buyers)))
        return f"{units} units from {provider} beyond its free stake", _error("InsufficientFreeStake"), round_id, None

    # -- escrow ------------------------------------------------------------------------------

    @rule(data=st.data())
    def deposit(self, data) -> None:
        buyer = data.draw(st.sampled_from(self.buyer_addrs), label="buyer")
        balance = self.credits[buyer]
        amount = self._amount(data, balance, "amount")
        expected = _error("ZeroAmount") if amount == 0 else _error("ERC20InsufficientBalance") if amount > balance else None
        if self._send(f"deposit {amount}", expected, self.env.settlement.deposit, amount, sender=self._sender(buyer)):
            self.credits[buyer] -= amount
            self.escrow[buyer][0] += amount

    @rule(data=st.data())
    def withdraw(self, data) -> None:
        buyer = data.draw(st.sampled_from(self.buyer_addrs), label="buyer")
        free = self.escrow[buyer][0]
        amount = self._amount(data, free, "amount")
        expected = _error("ZeroAmount") if amount == 0 else _error("InsufficientEscrow") if amount > free else None
        if self._send(f"withdraw {amount}", expected, self.env.settlement.withdraw, amount, sender=self._sender(buyer)):
            self.credits[buyer] += amount
            self.escrow[buyer][0] -= amount

    # -- leases ------------------------------------------------------------------------------

    @precondition(lambda self: self.lease_order)
    @rule(data=st.data())
    def claim(self, data) -> None:
        first = self._draw_lease(data, self._running)
        provider = first.provider
        others = [x for x in self.lease_order if x.provider == provider and x is not first]
        leases = [first] + (data.draw(st.lists(st.sampled_from(others), max_size=2, unique=True), label="more") if others else [])
        foreign = [x for x in self.lease_order if x.provider != provider]
        if foreign and data.draw(st.integers(0, 9), label="foreign?") == 0:
            leases.append(data.draw(st.sampled_from(foreign), label="foreign lease"))
        expected = None
        for lease in leases:
            if lease.provider != provider:
                expected = _error("NotLeaseProvider")
                break
            if lease.closed:
                expected = _error("LeaseAlreadyClosed")
                break
            if self._fault_pending(lease):
                expected = _error("FaultPending")
                break
        receipt = self._send(f"claim {leases}", expected, self.env.settlement.claim, [x.lease_id for x in leases],
                             sender=self._sender(provider))
        if receipt is None:
            return
        paid_events, closed_events, total = [], [], 0
        for lease in leases:
            if self.t >= lease.end:
                total += self._settle_and_close(lease, self.t, paid_events, closed_events)
            else:
                total += self._pay_up_to(lease, self.t, paid_events)
        self.credits[provider] += total
        self._check_lease_events(receipt, paid_events, closed_events)

    @precondition(lambda self: self.lease_order)
    @rule(data=st.data())
    def close(self, data) -> None:
        lease = self._draw_lease(data, self._running)
        others = [lease.provider, str(self.env.outsider.address)]
        caller = data.draw(st.sampled_from([lease.buyer] * 4 + others), label="caller")
        if lease.closed:
            expected = _error("LeaseAlreadyClosed")
        elif self.t < lease.end and caller != lease.buyer:
            expected = _error("NotLeaseBuyer")
        elif self._fault_pending(lease):
            expected = _error("FaultPending")
        else:
            expected = None
        receipt = self._send(f"close {lease}", expected, self.env.settlement.close, lease.lease_id, sender=self._sender(caller))
        if receipt is None:
            return
        paid_events, closed_events = [], []
        self.credits[lease.provider] += self._settle_and_close(lease, self.t, paid_events, closed_events)
        self._check_lease_events(receipt, paid_events, closed_events)

    @precondition(lambda self: self.lease_order)
    @rule(data=st.data())
    def heartbeat(self, data) -> None:
        first = self._draw_lease(data, lambda x: self._running(x) and self.t < x.end)
        provider = first.provider
        others = [x for x in self._open() if x.provider == provider and x is not first and self.t < x.end]
        leases = [first] + (data.draw(st.lists(st.sampled_from(others), max_size=2, unique=True), label="more") if others else [])
        foreign = [x for x in self.lease_order if x.provider != provider]
        if foreign and data.draw(st.integers(0, 9), label="foreign?") == 0:
            leases.append(data.draw(st.sampled_from(foreign), label="foreign lease"))
        expected = None
        for lease in leases:
            if lease.provider != provider:
                expected = _error("NotLeaseProvider")
            elif lease.closed:
                expected = _error("LeaseAlreadyClosed")
            elif self.t >= lease.end:
                expected = _error("LeaseEnded")
            elif self._fault_pending(lease):
                expected = _error("HeartbeatMissed")
            if expected:
                break
        receipt = self._send(f"heartbeat {leases}", expected, self.env.settlement.heartbeat, [x.lease_id for x in leases],
                             sender=self._sender(provider))
        if receipt is None:
            return
        for lease in leases:
            lease.last_heartbeat = self.t
            assert self.env.settlement.getLease(lease.lease_id).lastHeartbeat == self.t

    @precondition(lambda self: self.lease_order)
    @rule(data=st.data())
    def report_fault(self, data) -> None:
        lease = self._draw_lease(data, lambda x: not x.closed and self._fault_pending(x))
        reporter = data.draw(st.sampled_from(self.everyone), label="reporter")
        reportable = self._reportable_at(lease)
        if lease.closed:
            expected = _error("LeaseAlreadyClosed")
        elif reportable is None or self.t < reportable:
            expected = _error("HeartbeatNotMissed")
        else:
            expected = None
        staked, _, unbonding, _ = self.stakes[lease.provider]
        receipt = self._send(f"reportFault {lease}", expected, self.env.settlement.reportFault, lease.lease_id,
                             sender=self._sender(reporter))
        if receipt is None:
            return
        p = self.env.params
        paid_events, closed_events = [], []
        paid = self._settle_and_close(lease, lease.last_heartbeat + self.interval, paid_events, closed_events)
        self.credits[lease.provider] += paid
        self._check_lease_events(receipt, paid_events, closed_events)
        collateral = lease.units * self.spu
        [log] = receipt.decode_logs(self.env.settlement.FaultReported)
        ev = log.event_arguments
        # Invariant 4: slashing never takes more than the slashable stake, nor the lease's collateral.
        assert ev["slashed"] <= min(collateral, staked + unbonding), f"slashed {ev['slashed']}, collateral {collateral}"
        slashed = collateral * p.slash_bps // BPS
        to_buyer = slashed * p.slash_buyer_bps // BPS
        to_reporter = slashed * p.slash_reporter_bps // BPS
        burned = slashed - to_buyer - to_reporter
        got = (bytes(ev["leaseId"]), ev["reporter"], ev["slashed"], ev["toBuyer"], ev["toReporter"], ev["burned"])
        assert got == (lease.lease_id, reporter, slashed, to_buyer, to_reporter, burned), f"FaultReported {got}"
        account = self.stakes[lease.provider]
        from_staked = min(slashed, account[0])
        account[0] -= from_staked
        account[2] -= slashed - from_staked
        self.ubt_bal[lease.buyer] += to_buyer
        self.ubt_bal[reporter] += to_reporter
        self.slash_burned += burned

    # -- time --------------------------------------------------------------------------------

    def _advance_to(self, t: int) -> None:
        e = self.env
        self.t = t
        e.chain.mine(timestamp=t)
        if t - self.oracle_at >= e.params.oracle_max_age // 2:
            self._send("oracle setPrice", None, e.oracle.setPrice, e.params.ubt_price, sender=e.deployer)
            self.oracle_at = t

    @rule(dt=st.integers(1, 120) | st.integers(121, 900) | st.sampled_from([59, 60, 61, 90, 91, 92]))
    def advance_time(self, dt: int) -> None:
        self._advance_to(self.t + dt)

    def _boundaries(self) -> list[int]:
        times = set()
        for lease in self._open():
            times.update({lease.end - 1, lease.end})
            reportable = self._reportable_at(lease)
            if reportable is not None:
                times.update({reportable - 1, reportable})
        for _, _, unbonding, end in self.stakes.values():
            if unbonding:
                times.update({end - 1, end})
        return sorted(t for t in times if t > self.t)

    @precondition(lambda self: self._boundaries())
    @rule(data=st.data())
    def advance_to_boundary(self, data) -> None:
        """Jumps to a lease end, a fault-reportable time or an unbonding end, or one second before."""
        self._advance_to(data.draw(st.sampled_from(self._boundaries()), label="time"))

    # -- BME ---------------------------------------------------------------------------------

    @rule(data=st.data())
    def mint_credits(self, data) -> None:
        account = data.draw(st.sampled_from(self.buyer_addrs + self.provider_addrs), label="account")
        balance = self.ubt_bal[account]
        p = self.env.params
        least = -(-p.min_mint_credits * 10**20 * BPS // (p.ubt_price * (BPS - p.mint_spread_bps)))  # the minimum mint
        kind = data.draw(st.integers(0, 9), label="ubtIn: 0-6 valid, 7 below minimum, 8 zero, 9 too much")
        if kind <= 6:
            ubt_in = data.draw(st.integers(least, max(least, min(balance, 40 * UBT))), label="ubtIn")
        elif kind == 7:
            ubt_in = data.draw(st.integers(1, least - 1), label="ubtIn")
        else:
            ubt_in = 0 if kind == 8 else balance + 1
        out = ubt_in * p.ubt_price * (BPS - p.mint_spread_bps) // (10**20 * BPS)
        min_out = out + data.draw(st.sampled_from([0, 0, 0, 1]), label="minOut - out")
        if ubt_in == 0:
            expected = _error("ZeroAmount")
        elif out < p.min_mint_credits:
            expected = _error("MintBelowMinimum")
        elif min_out > out:
            expected = _error("SlippageExceeded")
        elif ubt_in > balance:
            expected = _error("ERC20InsufficientBalance")
        else:
            expected = None
        receipt = self._send(f"mintCredits {ubt_in}", expected, self.env.bme.mintCredits, ubt_in, min_out,
                             sender=self._sender(account))
        if receipt is None:
            return
        assert receipt.return_value == out
        self.ubt_bal[account] -= ubt_in
        self.credits[account] += out
        self.ubt_burned += ubt_in
        self.credits_minted += out

    @rule(data=st.data())
    def redeem(self, data) -> None:
        holders = [a for a in self.buyer_addrs + self.provider_addrs if self.credits[a]]
        if holders and data.draw(st.integers(0, 9), label="holder?") < 9:
            account = data.draw(st.sampled_from(holders), label="account")
        else:
            account = data.draw(st.sampled_from(self.buyer_addrs + self.provider_addrs), label="account")
        balance = self.credits[account]
        amount = self._amount(data, balance, "credits")
        out = amount * 10**20 // self.env.params.ubt_price
        if amount == 0:
            expected = _error("ZeroAmount")
        elif amount > balance:
            expected = _error("ERC20InsufficientBalance")
        else:
            expected = None
        receipt = self._send(f"redeem {amount}", expected, self.env.bme.redeem, amount, out, sender=self._sender(account))
        if receipt is None:
            return
        assert receipt.return_value == out
        self.credits[account] -= amount
        self.ubt_bal[account] += out
        self.credits_burned += amount
        self.ubt_minted += out

    # -- stake -------------------------------------------------------------------------------

    @rule(data=st.data())
    def stake(self, data) -> None:
        provider = data.draw(st.sampled_from(self.provider_addrs), label="provider")
        balance = self.ubt_bal[provider]
        amount = self._amount(data, min(balance, 300 * UBT), "amount")
        expected = _error("ZeroAmount") if amount == 0 else _error("ERC20InsufficientBalance") if amount > balance else None
        if self._send(f"stake {amount}", expected, self.env.settlement.stake, amount, sender=self._sender(provider)):
            self.ubt_bal[provider] -= amount
            self.stakes[provider][0] += amount

    @rule(data=st.data())
    def request_unstake(self, data) -> None:
        provider = data.draw(st.sampled_from(self.provider_addrs), label="provider")
        free = self._free_stake(provider)
        amount = self._amount(data, free, "amount")
        expected = _error("ZeroAmount") if amount == 0 else _error("InsufficientFreeStake") if amount > free else None
        unstake = self.env.settlement.requestUnstake
        if self._send(f"requestUnstake {amount}", expected, unstake, amount, sender=self._sender(provider)):
            account = self.stakes[provider]
            account[0] -= amount
            account[2] += amount
            account[3] = self.t + self.env.params.unbonding_period

    @rule(data=st.data())
    def withdraw_unbonded(self, data) -> None:
        unbonding = [p for p in self.provider_addrs if self.stakes[p][2] and self.stakes[p][3] <= self.t] or [
            p for p in self.provider_addrs if self.stakes[p][2]
        ]
        if unbonding and data.draw(st.integers(0, 9), label="unbonding?") < 9:
            provider = data.draw(st.sampled_from(unbonding), label="provider")
        else:
            provider = data.draw(st.sampled_from(self.provider_addrs), label="provider")
        account = self.stakes[provider]
        if account[2] == 0:
            expected = _error("NothingUnbonding")
        elif self.t < account[3]:
            expected = _error("UnbondingNotFinished")
        else:
            expected = None
        if self._send("withdrawUnbonded", expected, self.env.settlement.withdrawUnbonded, sender=self._sender(provider)):
            self.ubt_bal[provider] += account[2]
            account[2] = 0

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        v = self._read_chain()
        self._check_credit_conservation(v)
        self._check_ubt_conservation(v)
        self._check_leases_and_fills(v)
        self._check_stake(v)
        if self.failure:
            raise InvalidSettleAccepted(self.failure)

    def _read_chain(self) -> dict[tuple, Any]:
        e = self.env
        settlement, matcher = str(e.settlement.address), str(e.matcher.address)
        holders = [*self.everyone, settlement]
        calls = [
            ("credit", "totalSupply"), ("ubt", "totalSupply"),
            ("bme", "totalCreditsMinted"), ("bme", "totalCreditsBurned"),
            ("bme", "totalUbtMinted"), ("bme", "totalUbtBurned"),
            ("settlement", "totalSlashedBurned"), ("settlement", "matchers", matcher),
            *[("credit", "balanceOf", a) for a in holders],
            *[("ubt", "balanceOf", a) for a in holders],
            *[("settlement", "escrowOf", b) for b in self.buyer_addrs],
            *[("settlement", "providers", p) for p in self.provider_addrs],
            *[("settlement", "leaseBalances", x.lease_id) for x in self._open()],
            *[("settlement", "remainingOf", m.digest, m.signer, m.message.nonce, m.total) for m in self.msgs.values()],
        ]
        return self.env.reader.read(calls)

    def _check_credit_conservation(self, v) -> None:
        """Invariant 1."""
        settlement = str(self.env.settlement.address)
        supply = v["credit", "totalSupply"]
        held = {a: v["credit", "balanceOf", a] for a in self.everyone}
        escrow = {b: [v["settlement", "escrowOf", b]["free"], v["settlement", "escrowOf", b]["locked"]] for b in self.buyer_addrs}
        escrow_total = sum(free + locked for free, locked in escrow.values())
        in_settlement = v["credit", "balanceOf", settlement]
        assert in_settlement == escrow_total, f"settlement holds {in_settlement} credits, escrow adds up to {escrow_total}"
        assert supply == escrow_total + sum(held.values()), (
            f"credit supply {supply} != escrow {escrow_total} + held by users {sum(held.values())}"
        )
        minted, burned = v["bme", "totalCreditsMinted"], v["bme", "totalCreditsBurned"]
        assert supply == minted - burned, f"credit supply {supply} != BME minted {minted} - burned {burned}"
        assert escrow == self.escrow, f"escrow {escrow} != model {self.escrow}"
        assert held == self.credits, f"credit balances {held} != model {self.credits}"
        for buyer, (_, locked) in escrow.items():
            owed = sum(x.cost - x.chain_paid for x in self._open() if x.buyer == buyer)
            assert locked == owed, f"{buyer}: locked escrow {locked} != unpaid cost of its open leases {owed}"

    def _check_ubt_conservation(self, v) -> None:
        """Invariant 2."""
        settlement = str(self.env.settlement.address)
        supply = v["ubt", "totalSupply"]
        minted, burned = v["bme", "totalUbtMinted"], v["bme", "totalUbtBurned"]
        slash_burned = v["settlement", "totalSlashedBurned"]
        assert supply == self.env.params.genesis_supply + minted - burned - slash_burned, (
            f"UBT supply {supply} != genesis + minted {minted} - burned {burned} - slashed and burned {slash_burned}"
        )
        assert (minted, burned, slash_burned) == (self.ubt_minted, self.ubt_burned, self.slash_burned), "UBT totals"
        balances = {a: v["ubt", "balanceOf", a] for a in self.everyone}
        assert balances == self.ubt_bal, f"UBT balances {balances} != model {self.ubt_bal}"
        # Every UBT holder is known: the users, and the settlement (stake, bonds). The BME holds none.
        in_settlement = v["ubt", "balanceOf", settlement]
        assert supply == sum(balances.values()) + in_settlement, "UBT held outside the known accounts"

    def _check_leases_and_fills(self, v) -> None:
        """Invariant 3."""
        for lease in self.lease_order:
            limit = lease.units * lease.price * lease.duration // HOUR
            if lease.closed:
                # Everything the contract paid out and refunded for the lease (its events).
                paid, refund = lease.chain_paid, lease.chain_refund
                assert paid + refund <= limit, f"{lease}: paid {paid} + refunded {refund} > units*price*duration/3600 = {limit}"
                assert paid + refund == limit, f"{lease}: paid {paid} + refunded {refund} != its cost {limit} (dust)"
                continue
            balances = v["settlement", "leaseBalances", lease.lease_id]
            accrued_unpaid, remaining = balances["accruedUnpaid"], balances["remaining"]
            paid = lease.chain_paid
            assert paid + accrued_unpaid + remaining <= limit, (
                f"{lease}: paid {paid} + accrued {accrued_unpaid} + remaining {remaining} > units*price*duration/3600 = {limit}"
            )
            assert paid + accrued_unpaid + remaining == limit, f"{lease}: payments do not add up to its cost (dust)"
            covered = min(self.t, lease.last_heartbeat + self.interval)
            model_unpaid = max(lease.accrued(covered) - lease.accrued(lease.paid_until), 0)
            got = (accrued_unpaid, balances["collateral"])
            assert got == (model_unpaid, lease.units * self.spu), f"{lease}: (accruedUnpaid, collateral) {got}"
        for msg in self.msgs.values():
            assert msg.filled <= msg.total, (
                f"{msg} of {msg.signer}: leases opened from it add up to {msg.filled} units, beyond its {msg.total}"
            )
            remaining = v["settlement", "remainingOf", msg.digest, msg.signer, msg.message.nonce, msg.total]
            assert remaining == msg.total - msg.filled, (
                f"{msg}: remainingOf says {remaining}, but leases opened from it add up to {msg.filled} of {msg.total}"
            )

    def _check_stake(self, v) -> None:
        """Invariant 4."""
        total = 0
        for provider in self.provider_addrs:
            account = v["settlement", "providers", provider]
            staked, locked, unbonding = account["staked"], account["locked"], account["unbonding"]
            assert locked <= staked, f"{provider}: locked {locked} > staked {staked}"
            collateral = sum(x.units * self.spu for x in self._open() if x.provider == provider)
            assert locked == collateral, f"{provider}: locked {locked} != collateral of its open leases {collateral}"
            got = [staked, locked, unbonding, account["unbondingEnd"]]
            assert got == self.stakes[provider], f"{provider}: stake {got} != model {self.stakes[provider]}"
            total += staked + unbonding
        bond = v["settlement", "matchers", str(self.env.matcher.address)]["bond"]  # the one bonded matcher
        assert bond == self.matcher_bond, f"matcher bond {bond} != {self.matcher_bond}"
        held = v["ubt", "balanceOf", str(self.env.settlement.address)]
        assert held == total + bond, f"settlement holds {held} UBT; providers' stake + unbonding {total} + matcher bond {bond}"


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


def test_random_action_sequences_keep_invariants(
    market, chain, ubt, credit, bme, oracle, settlement, domain, params, deployer, matcher, buyers, providers, outsider
):
    for buyer in buyers:
        market.mint_credits(buyer, 3_000 * UBC)
        settlement.deposit(2_000 * UBC, sender=buyer)
        market.give_ubt(buyer, 200 * UBT)
        ubt.approve(bme, MAX_UINT, sender=buyer)
    for provider in providers:
        market.stake_provider(provider, 6)
        market.give_ubt(provider, 500 * UBT)
        ubt.approve(bme, MAX_UINT, sender=provider)
        ubt.approve(settlement, MAX_UINT, sender=provider)
    oracle.setPrice(params.ubt_price, sender=deployer)

    everyone = [str(a.address) for a in [deployer, matcher, *buyers, *providers, outsider]]
    start = dict(
        t=chain.blocks.head.timestamp,
        oracle_at=oracle.lastPosted()[1],
        credits={a: credit.balanceOf(a) for a in everyone},
        ubt_bal={a: ubt.balanceOf(a) for a in everyone},
        escrow={str(b.address): tuple(settlement.escrowOf(b)) for b in buyers},
        stakes={
            str(p.address): (a.staked, a.locked, a.unbonding, a.unbondingEnd)
            for p in providers
            for a in [settlement.providers(p)]
        },
        ubt_minted=bme.totalUbtMinted(),
        ubt_burned=bme.totalUbtBurned(),
        credits_minted=bme.totalCreditsMinted(),
        credits_burned=bme.totalCreditsBurned(),
        slash_burned=settlement.totalSlashedBurned(),
        matcher_bond=settlement.matchers(matcher).bond,
    )
    for contract in (settlement, credit, ubt, bme, oracle):
        for error in contract.contract_type.errors:
            ERRORS["0x" + keccak(text=error.selector)[:4].hex()] = error.name
    assert ERRORS["0x" + keccak(text="InsufficientEscrow(address,uint256,uint256)")[:4].hex()] == "InsufficientEscrow"
    reader = ChainReader(chain.provider.uri, dict(settlement=settlement, credit=credit, ubt=ubt, bme=bme))
    ProtocolMachine.env = Env(chain, ubt, credit, bme, oracle, settlement, domain, params, deployer, matcher,
                              buyers, providers, outsider, start, reader)
    run_state_machine_as_test(
        ProtocolMachine,
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            # Every step is real anvil transactions; shrinking a failure could take many minutes.
            # A failing run prints its whole (<= STEPS steps) sequence instead.
            phases=(Phase.explicit, Phase.generate),
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )


# ----------------------------------------------------------------------------------------------
# Minimal reproductions of what the state machine finds
# ----------------------------------------------------------------------------------------------
#
# `settle` counts the units left of each order and bid per array entry (`Book.orderLeft[i]`,
# `bidLeft[i]`, each starting from `units - partialFills[digest]`), not per signed message, and
# `_recordFill` then writes each entry's own fill over the previous entry's. A batch that lists
# the same signed order (or bid) twice therefore (1) can fill it beyond its units, (2) records
# only one entry's fill, so the message can be filled again in a later round, and (3) an unused
# second entry resets a recorded partial fill to zero. Either fix passes these tests: refusing a
# message listed twice in one batch, or counting fills per digest across entries.


def _fund(market, buyers, providers) -> None:
    market.fund_buyer(buyers[0], 100 * UBC)
    for provider in providers[:3]:
        market.stake_provider(provider, 4)


def test_an_order_listed_twice_in_one_batch_cannot_be_overfilled(market, settlement, buyers, providers):
    _fund(market, buyers, providers)
    order = market.order(buyers[0], units=2)
    bids = [market.bid(providers[0], capacity=2), market.bid(providers[1], capacity=2)]
    try:
        receipt = market.settle([order, order], bids, [(0, 0, 2), (1, 1, 2)], {H100: 2 * UBC})
    except ContractLogicError:
        return  # refused, as it must be
    leased = sum(log.event_arguments["units"] for log in receipt.decode_logs(settlement.LeaseOpened))
    assert leased <= 2, f"an order signed for 2 units was leased {leased} units in one batch"


def test_every_fill_of_an_order_listed_twice_is_recorded(market, settlement, buyers, providers):
    _fund(market, buyers, providers)
    order = market.order(buyers[0], units=2)
    bids = [market.bid(providers[0], capacity=2), market.bid(providers[1], capacity=2)]
    try:
        market.settle([order, order], bids, [(0, 0, 1), (1, 1, 1)], {H100: 2 * UBC}, round_id=1)
    except ContractLogicError:
        return  # refusing a message listed twice is a fix too
    remaining = settlement.remainingOf(order[0].digest(market.domain), buyers[0], order[0].nonce, 2)
    assert remaining == 0, f"2 of the order's 2 units were leased, but remainingOf says {remaining} are left"
    with reverts(settlement.NonceUsed):  # used up, so no later round may fill it again
        market.settle([order], [market.bid(providers[2], capacity=2)], [(0, 0, 1)], {H100: 2 * UBC}, round_id=2)


def test_an_unused_second_entry_does_not_erase_a_recorded_fill(market, settlement, buyers, providers):
    _fund(market, buyers, providers)
    bid = market.bid(providers[0], capacity=4)
    try:
        market.settle([market.order(buyers[0], units=2)], [bid, bid], [(0, 0, 2)], {H100: 2 * UBC})
    except ContractLogicError:
        return  # refusing a message listed twice is a fix too
    remaining = settlement.remainingOf(bid[0].digest(market.domain), providers[0], bid[0].nonce, 4)
    assert remaining == 2, f"2 of the bid's 4 units were leased, but remainingOf says {remaining} are left"
