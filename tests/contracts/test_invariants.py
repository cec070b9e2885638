"""Randomized invariant test: the five invariants of docs/PROTOCOL.md under random action sequences, on anvil.

A hypothesis state machine drives the deployed contracts with random sequences of deposit,
requestWithdrawal/withdraw, settle by two bonded matchers (valid rounds, some split in two batches,
some whose second batch never lands, and invalid ones that must revert), claim, close, heartbeat,
time advance, reportFault, mintCredits, redeem, stake, requestUnstake/withdrawUnbonded,
requestCancel/cancelNonces and bindMatcher (moving an account to the other matcher after the
notice). Every account trades through the matcher it is bound to; messages name that matcher; each
matcher's round ids only grow. It keeps an exact integer model of every balance the protocol moves,
checks each transaction's outcome and events against it, and after every step checks, against the
chain, with no tolerance:

1. credit conservation: credit supply == buyer escrow (free + locked) - what open leases have paid
   + credits held by users, and the settlement's credit balance == all escrow - what open leases
   have paid (a claim leaves `locked` alone: a lease's whole cost leaves it at the close); each
   buyer's `locked` == the whole cost of its open leases (with announced withdrawals as the model
   has them);
2. UBT conservation: UBT supply == genesis + BME mints - BME burns - burned part of slashes;
3. per lease: paid so far + still locked <= units * price * duration / 3600 (and the lease's
   payments add up to exactly that, as Leases.sol promises); per order and bid: units filled
   (summed from LeaseOpened events) <= units or capacity;
4. per provider: locked <= staked (an announced unstake stays staked until withdrawn); slashing
   takes at most the lease's collateral; the settlement's UBT == sum of staked plus the matcher
   bonds it also holds (MatcherBonds.sol), and nothing else;
5. signatures are used only within their nonce and deadline, on their chain, contract and matcher:
   per message, `remainingOf`, `nonceState` (claimed by its first filled message, void once filled
   completely or cancelled), `fills` and `cancelRequestedAt` agree with the model, and every
   invalid settle (expired, forged, reused or cancelled nonce, a nonce twice in one batch, another
   matcher's message or account, a stale round or batch, an expired batch) reverts with its error.

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
from eth_utils import keccak, to_checksum_address
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

from underbid.protocol.eip712 import Bid, Order
from underbid.protocol.markets import market_id

from ..conftest import A100, H100, HOUR, UBC, UBT
from ..reverts import reverts

BPS = 10_000
MAX_UINT = 2**256 - 1
MARKETS = (H100, A100)
# A market only the zero-cost mutation prices (at 1 base unit per unit-hour).
CHEAP = market_id("gpu=test-cheap;vram=1;gpus=1;region=nowhere")
ZERO = "0x" + "00" * 20
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
    record: int = 0  # what `fills(digest).filled` should say
    last_round: int = 0  # bids: `fills(digest).lastRound`

    @property
    def matcher(self) -> str:
        return self.message.matcher

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
    `chain_paid` is the accrual to the chain's `getLease(id).paidUntil` (payments have no event of
    their own) and `chain_refund` is summed from the contract's LeaseClosed events."""

    lease_id: bytes
    number: int
    matcher: str
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
class NonceM:
    """The model of one (signer, nonce): which message claimed it, whether it is void, and when
    its cancellation was requested (0: never)."""

    claimed_by: bytes | None = None
    void: bool = False
    cancel_at: int = 0


@dataclass
class Batch:
    """One settle call being built, with the resources its matches leave free. `buyers` and
    `providers` are the accounts bound to `matcher`, whose messages it may settle."""

    matcher: str
    buyers: list[str]
    providers: list[str]
    orders: list[Msg]
    bids: list[Msg]
    matches: list[tuple[int, int, int]]
    prices: dict[str, int]
    left: dict[bytes, int]
    free_escrow: dict[str, int]
    free_stake: dict[str, int]
    pairs: set[tuple[bytes, bytes]] = field(default_factory=set)
    taken: set[tuple[str, int]] = field(default_factory=set)  # (signer, nonce) of its entries


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
    second: Any  # a second bonded matcher (the deployer)
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
            args = [
                bytes.fromhex(a[2:]) if t.startswith("bytes") and isinstance(a, str) else a
                for t, a in zip(in_types, args, strict=True)
            ]
            data = "0x" + (selector + abi_encode(in_types, args)).hex()
            body.append(
                {"jsonrpc": "2.0", "id": n, "method": "eth_call", "params": [{"to": address, "data": data}, "latest"]}
            )
        replies = sorted(self.session.post(self.uri, json=body, timeout=60).json(), key=lambda r: r["id"])
        out = {}
        for call, reply in zip(calls, replies, strict=True):
            assert "result" in reply, f"eth_call {call} failed: {reply.get('error')}"
            _, _, _, names, out_types = self.methods[call[0], call[1]]
            values = abi_decode(out_types, bytes.fromhex(reply["result"][2:]))
            values = [to_checksum_address(x) if t == "address" else x for t, x in zip(out_types, values, strict=True)]
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
        self.notice, self.span, self.min_duration = p.notice_period, p.max_round_span, p.min_lease_duration
        self.accounts = {str(a.address): a for a in [e.deployer, e.matcher, *e.buyers, *e.providers, e.outsider]}
        self.everyone = list(self.accounts)
        self.buyer_addrs = [str(b.address) for b in e.buyers]
        self.provider_addrs = [str(p.address) for p in e.providers]
        self.main, self.other = str(e.matcher.address), str(e.second.address)
        self.matcher_addrs = [self.main, self.other]
        s = e.start
        self.t = s["t"]
        self.oracle_at = s["oracle_at"]
        self.credits = dict(s["credits"])
        self.ubt_bal = dict(s["ubt_bal"])
        self.escrow = {b: list(v) for b, v in s["escrow"].items()}
        self.withdrawals = {b: [0, 0] for b in self.buyer_addrs}  # announced amount, readyAt
        self.stakes = {p: list(v) for p, v in s["stakes"].items()}  # staked, locked, unbonding, unbondingEnd
        self.ubt_minted, self.ubt_burned = s["ubt_minted"], s["ubt_burned"]
        self.credits_minted, self.credits_burned = s["credits_minted"], s["credits_burned"]
        self.slash_burned = s["slash_burned"]
        self.matcher_bonds = dict(s["matcher_bonds"])
        # account -> [matcher, changeAt, next] (MatcherBinding.Binding without requestedAt)
        self.bindings = {a: [m, 0, ZERO] for a, m in s["bound"].items()}
        self.msgs: dict[bytes, Msg] = {}
        self.nonces: dict[tuple[str, int], NonceM] = {}
        self.leases: dict[bytes, LeaseM] = {}
        self.lease_order: list[LeaseM] = []
        # matcher -> round id -> [openedAt, batches, finalized]
        self.rounds: dict[str, dict[int, list]] = {m: {} for m in self.matcher_addrs}
        self.last_round = dict(s["last_round"])
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

    def _available_stake(self, provider: str) -> int:
        staked, locked, unbonding, _ = self.stakes[provider]
        return max(staked - locked - unbonding, 0)

    def _available_escrow(self, buyer: str) -> int:
        return max(self.escrow[buyer][0] - self.withdrawals[buyer][0], 0)

    def _bound(self, account: str) -> str:
        """The matcher `account` is bound to now (MatcherBinding.boundMatcherOf)."""
        if account not in self.bindings:
            return ZERO
        matcher, change_at, nxt = self.bindings[account]
        return nxt if change_at and self.t >= change_at else matcher

    def _bound_to(self, matcher: str) -> tuple[list[str], list[str]]:
        return ([b for b in self.buyer_addrs if self._bound(b) == matcher],
                [p for p in self.provider_addrs if self._bound(p) == matcher])

    def _nonce(self, msg: Msg) -> NonceM:
        return self.nonces.setdefault((msg.signer, msg.message.nonce), NonceM())

    def _remaining(self, msg: Msg) -> int:
        """UnorderedNonces.remainingOf: nothing once the nonce is void or claimed by another message."""
        state = self._nonce(msg)
        if state.void or (state.claimed_by is not None and state.claimed_by != msg.digest):
            return 0
        return max(msg.total - msg.filled, 0)

    def _reportable_at(self, lease: LeaseM) -> int | None:
        stop = lease.last_heartbeat + self.interval
        return None if stop >= lease.end else stop + self.grace + 1

    def _fault_pending(self, lease: LeaseM) -> bool:
        """A fault is reportable: the lease can only end through reportFault (claim/heartbeat skip it,
        close reverts)."""
        reportable = self._reportable_at(lease)
        return reportable is not None and self.t >= reportable

    def _pay_up_to(self, lease: LeaseM, until: int, paid_events: list) -> int:
        until = min(until, lease.last_heartbeat + self.interval, lease.end)
        if until <= lease.paid_until:
            return 0
        amount = lease.accrued(until) - lease.accrued(lease.paid_until)
        lease.paid_until = until
        lease.paid += amount
        # The buyer's locked escrow is untouched: the lease's whole cost leaves it at the close.
        paid_events.append((lease.lease_id, lease.provider, amount, until))
        return amount

    def _settle_and_close(self, lease: LeaseM, until: int, paid_events: list, closed_events: list) -> int:
        paid = self._pay_up_to(lease, until, paid_events)
        refund = lease.accrued(lease.end) - lease.accrued(lease.paid_until)
        lease.closed = True
        self.escrow[lease.buyer][1] -= lease.cost
        self.escrow[lease.buyer][0] += refund
        collateral = lease.units * self.spu
        self.stakes[lease.provider][1] -= collateral
        closed_events.append((lease.lease_id, refund, collateral))
        return paid

    def _check_lease_events(self, receipt, paid_events: list, closed_events: list, skipped: list | None = None) -> None:
        s = self.env.settlement
        # Event fields are read from `event_arguments`: on an ape log, `.provider` is the RPC provider.
        # Payments have no event of their own: each is the credit's Transfer from the settlement to
        # the provider (one per transaction), and each lease's paid-until is read back from the chain.
        closed_logs = [x.event_arguments for x in receipt.decode_logs(s.LeaseClosed)]
        got_closed = [(bytes(x["leaseId"]), x["refund"], x["collateral"]) for x in closed_logs]
        # (decode_logs matches an event by its signature only: UBT's Transfer has the same one.)
        credit = self.env.credit.address
        transfers = [x.event_arguments for x in receipt.decode_logs(self.env.credit.Transfer)
                     if x.contract_address == credit]
        got_transfers = [(x["from"], x["to"], x["value"]) for x in transfers]
        want_total = sum(amount for _, _, amount, _ in paid_events)
        providers = {provider for _, provider, _, _ in paid_events}
        want_transfers = [(str(s.address), providers.pop(), want_total)] if want_total else []
        assert got_transfers == want_transfers, f"credit Transfers {got_transfers} != model {want_transfers}"
        for lease_id, _, _, until in paid_events:
            lease = self.leases[lease_id]
            chain_until = s.getLease(lease_id).paidUntil
            assert chain_until == until, f"{lease}: paidUntil {chain_until} != model {until}"
            lease.chain_paid = lease.accrued(chain_until)
        for lease_id, refund, _ in got_closed:
            self.leases[lease_id].chain_refund += refund
        assert got_closed == closed_events, f"LeaseClosed events {got_closed} != model {closed_events}"
        if skipped is not None:
            self._check_skipped(receipt, skipped)

    def _check_skipped(self, receipt, skipped: list) -> None:
        logs = [x.event_arguments for x in receipt.decode_logs(self.env.settlement.LeaseSkipped)]
        got = [(bytes(x["leaseId"]), int(x["reason"])) for x in logs]
        assert got == skipped, f"LeaseSkipped events {got} != model {skipped}"

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
        digest = message.digest(self.env.domain)
        if key_owner is None and (known := self.msgs.get(digest)) is not None:
            # The same fields and nonce signed again are the same message on chain (one digest,
            # one fill record): hypothesis found a "shared nonce" draw that rebuilt one exactly.
            return known
        key = self._sender(key_owner or message.signer).private_key
        self.msg_count += 1
        return Msg(kind, message, message.sign(key, self.env.domain), message.digest(self.env.domain), self.msg_count)

    def _fresh_nonce(self, data, signer: str, taken: set | None) -> int:
        """A new nonce, or one in ten times the nonce of another message of `signer` that no
        message has claimed yet (and that the batch does not use): then whichever of the two fills
        first takes the nonce, and the other can never fill."""
        if taken is not None and data.draw(st.integers(0, 9), label="share a nonce?") == 0:
            shared = sorted({m.message.nonce for m in self.msgs.values() if m.signer == signer
                             and (signer, m.message.nonce) not in taken and self._remaining(m) == m.total})
            if shared:
                return data.draw(st.sampled_from(shared), label="shared nonce")
        return next(_nonces)

    def _new_order(self, data, batch: Batch | None = None, **given) -> Msg:
        """A freshly signed order naming the batch's matcher, by a buyer bound to it; the fields not given are drawn."""
        draws = dict(
            buyer=lambda: data.draw(st.sampled_from(batch.buyers), label="buyer"),
            matcher=lambda: batch.matcher,
            market=lambda: data.draw(st.sampled_from(MARKETS), label="market"),
            units=lambda: data.draw(st.integers(1, 4), label="units"),
            duration=lambda: data.draw(st.integers(self.min_duration, 1800) | st.sampled_from([30, 59, 60, 61, 3600]),
                                       label="duration"),
            max_price=lambda: data.draw(st.integers(UBC, 5 * UBC), label="maxPrice"),
            deadline=lambda: self.t + data.draw(st.integers(0, 900), label="deadline - now"),
        )
        values = {name: given[name] if name in given else draw() for name, draw in draws.items()}
        nonce = given.get("nonce") or self._fresh_nonce(data, values["buyer"], batch.taken if batch else None)
        msg = self._sign("order", Order(**values, nonce=nonce))
        if batch is not None:
            batch.taken.add((msg.signer, nonce))
        return msg

    def _new_bid(self, data, batch: Batch | None = None, **given) -> Msg:
        """A freshly signed bid naming the batch's matcher, by a provider bound to it; the fields not given
        are drawn."""
        draws = dict(
            provider=lambda: data.draw(st.sampled_from(batch.providers), label="provider"),
            matcher=lambda: batch.matcher,
            market=lambda: data.draw(st.sampled_from(MARKETS), label="market"),
            capacity=lambda: data.draw(st.integers(1, 6), label="capacity"),
            price=lambda: data.draw(st.integers(UBC // 2, 4 * UBC), label="price"),
            max_duration=lambda: data.draw(st.integers(60, 3600), label="maxDuration"),
            deadline=lambda: self.t + data.draw(st.integers(0, 900), label="deadline - now"),
        )
        values = {name: given[name] if name in given else draw() for name, draw in draws.items()}
        nonce = given.get("nonce") or self._fresh_nonce(data, values["provider"], batch.taken if batch else None)
        msg = self._sign("bid", Bid(**values, nonce=nonce))
        if batch is not None:
            batch.taken.add((msg.signer, nonce))
        return msg

    def _live(self, batch: Batch, kind: str) -> list[Msg]:
        """Messages from earlier rounds the batch's matcher may still fill."""
        signers = set(batch.buyers if kind == "order" else batch.providers)
        return [m for m in self.msgs.values() if m.kind == kind and m.matcher == batch.matcher and m.signer in signers
                and self._remaining(m) > 0 and m.message.deadline >= self.t
                and (m.signer, m.message.nonce) not in batch.taken]

    def _pick(self, data, batch: Batch, kind: str) -> list[Msg]:
        """1-3 entries: new messages, or live ones from earlier rounds; one per (signer, nonce)."""
        entries: list[Msg] = []
        for _ in range(data.draw(st.integers(1, 3), label=f"{kind}s")):
            live = self._live(batch, kind)
            options = ["new"] + (["live"] if live else [])
            if data.draw(st.sampled_from(options), label=f"{kind} source") == "live":
                msg = data.draw(st.sampled_from(live), label=f"live {kind}")
                batch.taken.add((msg.signer, msg.message.nonce))
                entries.append(msg)
            else:
                entries.append(self._new_order(data, batch) if kind == "order" else self._new_bid(data, batch))
        return entries

    # -- settle ------------------------------------------------------------------------------

    def _empty_batch(self, matcher: str) -> Batch:
        buyers, providers = self._bound_to(matcher)
        return Batch(matcher, buyers, providers, [], [], [], {}, {},
                     free_escrow={b: self.escrow[b][0] for b in self.buyer_addrs},
                     free_stake={p: self._free_stake(p) for p in self.provider_addrs})

    def _draw_matcher(self, data) -> str | None:
        """The matcher that settles: the test matcher mostly, while some buyer and provider are bound to it."""
        able = [m for m in self.matcher_addrs if all(self._bound_to(m))]
        if not able:
            return None
        if len(able) == 2 and data.draw(st.integers(0, 3), label="second matcher?") == 0:
            return self.other
        return able[0]

    def _random_batch(self, data, matcher: str) -> Batch:
        """New and live (partly filled in earlier rounds) entries; a uniform price per market
        between its cheapest bid and its highest order limit."""
        batch = self._empty_batch(matcher)
        batch.orders, batch.bids = self._pick(data, batch, "order"), self._pick(data, batch, "bid")
        for market in MARKETS:
            asks = [b.message.price for b in batch.bids if b.message.market == market]
            limits = [o.message.max_price for o in batch.orders if o.message.market == market]
            if asks and limits and min(asks) <= max(limits):
                batch.prices[market] = data.draw(st.integers(min(asks), max(limits)), label="clearing price")
        return self._match(data, batch)

    def _paired_batch(self, data, matcher: str) -> Batch:
        """1-3 fresh order/bid pairs that can trade with each other at their market's price."""
        batch = self._empty_batch(matcher)
        prices = batch.prices
        for _ in range(data.draw(st.integers(1, 3), label="pairs")):
            market = data.draw(st.sampled_from(MARKETS), label="market")
            if market not in prices:
                prices[market] = data.draw(st.integers(UBC, 3 * UBC), label="clearing price")
            price = prices[market]
            order = self._new_order(data, batch, market=market, duration=data.draw(
                st.integers(self.min_duration, 1800), label="duration"),
                max_price=data.draw(st.integers(price, 5 * UBC), label="maxPrice"))
            bid = self._new_bid(
                data,
                batch,
                market=market,
                price=data.draw(st.integers(UBC // 2, price), label="bid price"),
                max_duration=data.draw(st.integers(order.message.duration, 3600), label="maxDuration"),
            )
            batch.orders.append(order)
            batch.bids.append(bid)
        return self._match(data, batch, paired=True)

    def _batch(self, data, matcher: str) -> Batch:
        if data.draw(st.booleans(), label="paired?"):
            return self._paired_batch(data, matcher)
        return self._random_batch(data, matcher)

    def _match(self, data, batch: Batch, paired: bool = False) -> Batch:
        """Random matches within units, capacity, free stake and free escrow (a valid batch)."""
        batch.left = {m.digest: self._remaining(m) for m in batch.orders + batch.bids}
        for oi, o in enumerate(batch.orders):
            for bi, b in enumerate(batch.bids):
                om, bm = o.message, b.message
                price = batch.prices.get(om.market)
                if om.market != bm.market or price is None or not bm.price <= price <= om.max_price:
                    continue
                if not self.min_duration <= om.duration <= bm.max_duration or (o.digest, b.digest) in batch.pairs:
                    continue
                affordable = ((batch.free_escrow[om.buyer] + 1) * HOUR - 1) // (price * om.duration)
                cap = min(
                    batch.left[o.digest], batch.left[b.digest], batch.free_stake[bm.provider] // self.spu, affordable
                )
                least = 1 if paired and oi == bi else 0  # a fresh pair trades whenever it can
                units = data.draw(st.integers(least, cap), label=f"units {o} x {b}") if cap > 0 else 0
                if units:
                    self._add_match(batch, oi, bi, units)
        return batch

    def _add_match(self, batch: Batch, oi: int, bi: int, units: int) -> None:
        o, b = batch.orders[oi], batch.bids[bi]
        price = batch.prices[o.message.market]
        batch.matches.append((oi, bi, units))
        batch.left[o.digest] = batch.left.get(o.digest, self._remaining(o)) - units
        batch.left[b.digest] = batch.left.get(b.digest, self._remaining(b)) - units
        batch.free_escrow[o.signer] -= units * price * o.message.duration // HOUR
        batch.free_stake[b.signer] -= units * self.spu
        batch.pairs.add((o.digest, b.digest))

    def _call(self, header: tuple, batch: Batch, sender=None):
        """`header` is (round, batch, final) or (round, batch, final, deadline); the deadline
        defaults to half a notice period ahead, as an honest matcher sets it."""
        if len(header) == 3:
            header = (*header, self.t + self.notice // 2)
        return dict(
            args=(
                header,
                [o.message.as_call_tuple() for o in batch.orders],
                [o.signature for o in batch.orders],
                [b.message.as_call_tuple() for b in batch.bids],
                [b.signature for b in batch.bids],
                list(batch.matches),
                list(batch.prices.items()),
            ),
            sender=sender or self.accounts[batch.matcher],
        )

    def _sub_batch(self, batch: Batch, matches: list[tuple[int, int, int]]) -> Batch:
        """The part of `batch` that `matches` use, re-indexed (a message used up in an earlier
        batch would fail its nonce check if listed again)."""
        orders = list(dict.fromkeys(batch.orders[oi] for oi, _, _ in matches))
        bids = list(dict.fromkeys(batch.bids[bi] for _, bi, _ in matches))
        new = [(orders.index(batch.orders[oi]), bids.index(batch.bids[bi]), u) for oi, bi, u in matches]
        used = {o.message.market for o in orders}
        return Batch(batch.matcher, batch.buyers, batch.providers, orders, bids, new,
                     {m: p for m, p in batch.prices.items() if m in used}, {}, {}, {})

    def _expected_opened(self, batch: Batch) -> list:
        out = []
        for oi, bi, units in batch.matches:
            o, b = batch.orders[oi], batch.bids[bi]
            out.append((o.digest, b.digest, units, batch.prices[o.message.market]))
        return sorted(out)

    def _open_batch_error(self, matcher: str, round_id: int, batch_no: int, deadline: int) -> str | None:
        """MatcherRounds._openBatch: the error a batch header reverts with now, or None."""
        if self.t > deadline:
            return "BatchExpired"
        last = self.last_round[matcher]
        if batch_no == 0:
            return "RoundIdNotIncreasing" if round_id <= last else None
        opened = self.rounds[matcher].get(round_id)
        if opened is None:
            return "BatchOutOfOrder"
        opened_at, batches, finalized = opened
        if finalized:
            return "RoundAlreadySettled"
        if round_id != last or self.t > opened_at + self.span:
            return "RoundClosed"
        return "BatchOutOfOrder" if batch_no != batches else None

    def _apply_batch(self, matcher: str, round_id: int, batch_no: int, final: bool) -> None:
        if batch_no == 0:
            self.last_round[matcher] = round_id
            self.rounds[matcher][round_id] = [self.t, 0, False]
        opened = self.rounds[matcher][round_id]
        opened[1] = batch_no + 1
        opened[2] = opened[2] or final

    def _apply_opened(self, receipt, batch: Batch, round_id: int) -> list:
        """Adds the leases a receipt opened to the model and records the batch's fills as
        `settle` does; returns (order, bid, units, price)."""
        s = self.env.settlement
        known = {m.digest: m for m in batch.orders + batch.bids}
        before = {m.digest: m.filled for m in known.values()}
        opened = []
        for log in receipt.decode_logs(s.LeaseOpened):
            ev = log.event_arguments
            od, bd = bytes(ev["orderDigest"]), bytes(ev["bidDigest"])
            order, bid = known[od], known[bd]
            duration = order.message.duration
            lease = LeaseM(
                bytes(ev["leaseId"]),
                len(self.lease_order) + 1,
                batch.matcher,
                ev["buyer"],
                ev["provider"],
                ev["units"],
                ev["price"],
                duration,
                ev["start"],
                ev["end"],
                paid_until=ev["start"],
                last_heartbeat=ev["start"],
            )
            got = (ev["round"], ev["matcher"], ev["start"], ev["end"], ev["buyer"], ev["provider"])
            want = (round_id, batch.matcher, self.t, self.t + duration, order.signer, bid.signer)
            assert got == want, f"{lease}: LeaseOpened (round, matcher, start, end, buyer, provider) {got} != {want}"
            lease_id = keccak(
                abi_encode(["address", "uint64", "bytes32", "bytes32"], [batch.matcher, round_id, od, bd])
            )
            assert lease.lease_id == lease_id, (
                f"{lease}: id {lease.lease_id.hex()} != leaseIdOf(matcher, round, od, bd)"
            )
            assert lease.lease_id not in self.leases, f"{lease}: a lease id opened twice"
            self.leases[lease.lease_id] = lease
            self.lease_order.append(lease)
            self.escrow[lease.buyer][0] -= lease.cost
            self.escrow[lease.buyer][1] += lease.cost
            self.stakes[lease.provider][1] += lease.units * self.spu
            order.filled += lease.units
            bid.filled += lease.units
            opened.append((od, bd, ev["units"], ev["price"]))
        for msg in known.values():  # UnorderedNonces._recordFill
            self.msgs.setdefault(msg.digest, msg)
            if msg.filled == before[msg.digest]:
                continue
            state = self._nonce(msg)
            if state.claimed_by is None:
                state.claimed_by = msg.digest
            assert state.claimed_by == msg.digest, f"{msg} filled while another message held its nonce"
            state.void = state.void or msg.filled == msg.total
            # A message used up by its first fill keeps no record (its nonce bits say it all); a
            # bid's record, once it has one, follows every later fill with its round.
            if msg.kind == "bid":
                if before[msg.digest] != 0 or msg.filled < msg.total:
                    msg.record, msg.last_round = msg.filled, round_id
            elif msg.filled < msg.total:
                msg.record = msg.filled
        return sorted(opened)

    @initialize(data=st.data())
    def open_first_leases(self, data) -> None:
        """Every example starts with a settled round (swarm testing may switch `settle` off)."""
        self._settle_valid(data, self._paired_batch(data, self.main))

    @rule(data=st.data())
    def settle(self, data) -> None:
        matcher = self._draw_matcher(data)
        if matcher is None:  # every buyer or every provider is moving between matchers
            return
        self._settle_valid(data, self._batch(data, matcher))

    @rule(data=st.data())
    def settle_invalid(self, data) -> None:
        # One broken rule at a time, mostly on a paired batch (it has matches to break).
        matcher = self._draw_matcher(data)
        if matcher is None:
            return
        if data.draw(st.integers(0, 3), label="random base batch?") == 0:
            batch = self._random_batch(data, matcher)
        else:
            batch = self._paired_batch(data, matcher)
        self._settle_invalid(data, batch)

    def _next_round(self, data, matcher: str) -> int:
        return self.last_round[matcher] + data.draw(st.sampled_from([1, 1, 1, 2, 7]), label="round id step")

    def _settle_valid(self, data, batch: Batch) -> None:
        """Settles `batch` in one call, or split in two batches of one round (the second one
        sometimes later within the round span, after it, or never); it must succeed."""
        s = self.env.settlement
        matcher = batch.matcher
        round_id = self._next_round(data, matcher)
        parts = [batch]
        if len(batch.matches) >= 2 and data.draw(st.booleans(), label="two batches?"):
            cut = data.draw(st.integers(1, len(batch.matches) - 1), label="cut")
            parts = [self._sub_batch(batch, batch.matches[:cut]), self._sub_batch(batch, batch.matches[cut:])]
        landed = []
        for n, part in enumerate(parts):
            expected = None
            if n == 1:
                wait = data.draw(
                    st.sampled_from([0, 0, 0, 1, self.span, self.span + 1, None]), label="second batch after"
                )
                if wait is None:
                    break  # the second batch never lands: the round stays open until the span is over
                if wait and min(m.message.deadline for m in part.orders + part.bids) >= self.t + wait:
                    self._advance_to(self.t + wait)
                expected = self._open_batch_error(matcher, round_id, 1, self.t + self.notice // 2)
                if expected is not None:
                    assert expected == "RoundClosed", expected
                    call = self._call((round_id, n, True), part)
                    self._send(f"settle round {round_id} batch 1 after the span", _error(expected), s.settle,
                               *call["args"], sender=call["sender"])
                    break
            final = n == len(parts) - 1
            call = self._call((round_id, n, final), part)
            receipt = self._send(
                f"settle round {round_id} batch {n}", None, s.settle, *call["args"], sender=call["sender"]
            )
            self._apply_batch(matcher, round_id, n, final)
            assert self._apply_opened(receipt, part, round_id) == self._expected_opened(part), (
                "leases opened != matches"
            )
            landed.append(part)
        prices = self.env.reader.read([("settlement", "clearingPrice", matcher, round_id, m) for m in batch.prices])
        # A split round sends each batch only the prices of the markets it trades in, so a market
        # priced but left without a match is never sent, and no price is stored for it.
        sent = {market: price for part in landed for market, price in part.prices.items()}
        for market in batch.prices:
            got = prices["settlement", "clearingPrice", matcher, round_id, market]
            assert got == sent.get(market, 0), f"stored clearing price {got} != {sent.get(market, 0)}"

    def _settle_invalid(self, data, batch: Batch) -> None:
        """Breaks one rule of `settle`; the call must revert (and change nothing)."""
        mutations = [self._mut_expired, self._mut_bad_signature, self._mut_not_matcher, self._mut_bad_index,
                     self._mut_duration, self._mut_duration_short, self._mut_zero_cost, self._mut_underfunded,
                     self._mut_understaked, self._mut_market_mismatch, self._mut_batch_expired,
                     self._mut_other_matcher, self._mut_not_bound, self._mut_duplicate_nonce]
        if batch.matches:
            mutations += [self._mut_overfill, self._mut_price_below_bid, self._mut_price_above_max]
        if self._used_up(batch):
            mutations.append(self._mut_used_nonce)
        if self._claimed(batch):
            mutations.append(self._mut_claimed_nonce)
        if self.rounds[batch.matcher]:
            mutations += [self._mut_old_round, self._mut_later_batch]
        mutation = data.draw(st.sampled_from(mutations), label="mutation")
        round_id = self._next_round(data, batch.matcher)
        result = mutation(data, batch, round_id)
        if result is None:  # not applicable here (no signer has the resources it needs)
            result = self._mut_expired(data, batch, round_id)
        what, expected, header, sender = result
        call = self._call(header, batch, sender)
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
        self._apply_batch(batch.matcher, header[0], header[1], header[2])
        self._apply_opened(receipt, batch, header[0])
        self.failure = f"invalid settle accepted: {what}; matches {batch.matches}"

    # Each mutation edits `batch` and returns (description, allowed errors or None for any, header, sender).

    def _resources(self, batch: Batch, buyer_needs: int = 0, stake_needs: int = 0):
        buyers = [b for b in batch.buyers if batch.free_escrow[b] >= buyer_needs]
        providers = [p for p in batch.providers if batch.free_stake[p] >= stake_needs]
        return buyers, providers

    def _price_for(self, data, batch: Batch, market: str) -> int:
        if market not in batch.prices:
            batch.prices[market] = data.draw(st.integers(UBC, 3 * UBC), label="extra market price")
        return batch.prices[market]

    @staticmethod
    def _header(round_id: int) -> tuple:
        return (round_id, 0, True)

    def _mut_expired(self, data, batch, round_id):
        if data.draw(st.booleans(), label="expired order?"):
            batch.orders.append(self._new_order(data, batch, deadline=self.t - 1))
            return "an order past its deadline", _error("OrderExpired"), self._header(round_id), None
        batch.bids.append(self._new_bid(data, batch, deadline=self.t - 1))
        return "a bid past its deadline", _error("BidExpired"), self._header(round_id), None

    def _mut_bad_signature(self, data, batch, round_id):
        order = self._new_order(data, batch)
        forger = data.draw(st.sampled_from([a for a in self.buyer_addrs if a != order.signer]), label="forger")
        batch.orders.append(self._sign("order", order.message, key_owner=forger))
        return "an order signed by another key", _error("SignerMismatch"), self._header(round_id), None

    def _mut_not_matcher(self, data, batch, round_id):
        return ("sent by an account with no matcher bond", _error("MatcherNotBonded"), self._header(round_id),
                self.env.outsider)

    def _mut_bad_index(self, data, batch, round_id):
        batch.matches.append((len(batch.orders), 0, 1))
        return "a match index out of range", _error("MatchIndexOutOfRange"), self._header(round_id), None

    def _mut_batch_expired(self, data, batch, round_id):
        deadline = self.t - data.draw(st.integers(1, self.notice), label="seconds past the batch deadline")
        return f"a batch past its deadline {deadline}", _error("BatchExpired"), (round_id, 0, True, deadline), None

    def _mut_old_round(self, data, batch, round_id):
        old = data.draw(st.sampled_from(sorted(self.rounds[batch.matcher])), label="earlier round")
        return f"round {old} opened again", _error("RoundIdNotIncreasing"), (old, 0, True), None

    def _mut_later_batch(self, data, batch, round_id):
        """A later batch of an earlier round: final, no longer the last, past its span, or out of order."""
        old = data.draw(st.sampled_from(sorted(self.rounds[batch.matcher])), label="round")
        batches = self.rounds[batch.matcher][old][1]
        batch_no = data.draw(st.sampled_from([batches, batches + 1, 1]), label="batch number")
        expected = self._open_batch_error(batch.matcher, old, batch_no, self.t + self.notice // 2)
        if expected is None:  # the round still takes this batch: make it out of order instead
            batch_no += 1
            expected = "BatchOutOfOrder"
        return f"batch {batch_no} of round {old}", _error(expected), (old, batch_no, True), None

    def _mut_other_matcher(self, data, batch, round_id):
        other = self.other if batch.matcher == self.main else self.main
        if data.draw(st.booleans(), label="order?"):
            batch.orders.append(self._new_order(data, batch, matcher=other))
        else:
            batch.bids.append(self._new_bid(data, batch, matcher=other))
        return (
            f"a message naming the other matcher {other}",
            _error("MessageForOtherMatcher"),
            self._header(round_id),
            None,
        )

    def _mut_not_bound(self, data, batch, round_id):
        """A message naming the batch's matcher by an account not bound to it (the outsider, or an
        account bound to the other matcher or moving there)."""
        buyers = [b for b in self.buyer_addrs if self._bound(b) != batch.matcher] + [str(self.env.outsider.address)]
        buyer = data.draw(st.sampled_from(buyers), label="unbound buyer")
        batch.orders.append(self._new_order(data, batch, buyer=buyer))
        return (
            f"an order of {buyer}, not bound to {batch.matcher}",
            _error("AccountNotBound"),
            self._header(round_id),
            None,
        )

    def _mut_duplicate_nonce(self, data, batch, round_id):
        """A (signer, nonce) twice in one batch: the same message again, or another one signed with its nonce."""
        entries = [(m, kind) for kind, ms in (("order", batch.orders), ("bid", batch.bids)) for m in ms
                   if m.matcher == batch.matcher and self._bound(m.signer) == batch.matcher]
        msg, kind = data.draw(st.sampled_from(entries), label="entry")
        if data.draw(st.booleans(), label="same message?"):
            twin = msg
        elif kind == "order":
            twin = self._new_order(data, batch, buyer=msg.signer, nonce=msg.message.nonce)
        else:
            twin = self._new_bid(data, batch, provider=msg.signer, nonce=msg.message.nonce)
        (batch.orders if kind == "order" else batch.bids).append(twin)
        return f"{twin} sharing the nonce of {msg}", _error("DuplicateNonce"), self._header(round_id), None

    def _used_up(self, batch: Batch) -> list[Msg]:
        """Messages of the batch's matcher and accounts whose nonce is void (filled completely or
        cancelled), still before their deadline."""
        return [
            m
            for m in self.msgs.values()
            if m.matcher == batch.matcher
            and self._bound(m.signer) == batch.matcher
            and self._nonce(m).void
            and m.message.deadline >= self.t
            and (m.signer, m.message.nonce) not in batch.taken
        ]

    def _mut_used_nonce(self, data, batch, round_id):
        msg = data.draw(st.sampled_from(self._used_up(batch)), label="used-up message")
        (batch.orders if msg.kind == "order" else batch.bids).append(msg)
        why = "cancelled" if msg.filled < msg.total else "filled completely"
        return f"{msg}, {why}", _error("NonceUsed"), self._header(round_id), None

    def _claimed(self, batch: Batch) -> list[Msg]:
        """Messages of the batch's accounts whose nonce a message has claimed and not voided."""
        return [m for m in self.msgs.values() if self._bound(m.signer) == batch.matcher
                and self._nonce(m).claimed_by is not None and not self._nonce(m).void
                and (m.signer, m.message.nonce) not in batch.taken]

    def _mut_claimed_nonce(self, data, batch, round_id):
        msg = data.draw(st.sampled_from(self._claimed(batch)), label="partly filled message")
        if msg.kind == "order":
            twin = self._new_order(data, batch, buyer=msg.signer, nonce=msg.message.nonce)
            batch.orders.append(twin)
        else:
            twin = self._new_bid(data, batch, provider=msg.signer, nonce=msg.message.nonce)
            batch.bids.append(twin)
        self.msgs[twin.digest] = twin  # never filled: remainingOf must say 0 for it from now on
        return f"{twin} with the nonce {msg} claimed", _error("NonceUsed"), self._header(round_id), None

    def _mut_price_below_bid(self, data, batch, round_id):
        oi, bi, _ = data.draw(st.sampled_from(batch.matches), label="match")
        market = batch.orders[oi].message.market
        top = max(batch.bids[b].message.price for o, b, _ in batch.matches if batch.orders[o].message.market == market)
        batch.prices[market] = top - 1
        return "a clearing price below a winning bid", _error("BidAboveClearingPrice"), self._header(round_id), None

    def _mut_price_above_max(self, data, batch, round_id):
        oi, bi, _ = data.draw(st.sampled_from(batch.matches), label="match")
        market = batch.orders[oi].message.market
        low = min(
            batch.orders[o].message.max_price for o, b, _ in batch.matches if batch.orders[o].message.market == market
        )
        batch.prices[market] = low + 1
        # A higher price may exhaust a buyer's escrow on an earlier match first.
        allowed = frozenset({"ClearingPriceAboveMaxPrice", "InsufficientEscrow"})
        return "a clearing price above a served order's maxPrice", allowed, self._header(round_id), None

    def _mut_overfill(self, data, batch, round_id):
        i = data.draw(st.integers(0, len(batch.matches) - 1), label="match")
        oi, bi, units = batch.matches[i]
        o, b = batch.orders[oi], batch.bids[bi]
        extra = min(batch.left[o.digest], batch.left[b.digest]) + 1
        batch.matches[i] = (oi, bi, units + extra)
        allowed = frozenset({"OrderOverfilled", "BidOverfilled", "InsufficientEscrow", "InsufficientFreeStake"})
        return f"match {i} filled beyond its order or bid", allowed, self._header(round_id), None

    def _fresh_pair(self, data, batch, *, units, duration, max_duration, buyer, provider, order_market=H100,
                    bid_market=H100, price=None):
        """Appends a new order and bid matched for `units` (each mutation then breaks one rule)."""
        if price is not None:
            batch.prices[order_market] = price
        price = self._price_for(data, batch, order_market)
        if bid_market != order_market:
            self._price_for(data, batch, bid_market)
        order = self._new_order(data, batch, buyer=buyer, market=order_market, units=units, duration=duration,
                                max_price=price, deadline=self.t + 600)
        bid = self._new_bid(
            data,
            batch,
            provider=provider,
            market=bid_market,
            capacity=units,
            price=min(price, batch.prices[bid_market]),
            max_duration=max_duration,
            deadline=self.t + 600,
        )
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
        return "an order longer than its bid's maxDuration", _error("DurationTooLong"), self._header(round_id), None

    def _mut_duration_short(self, data, batch, round_id):
        _, providers = self._resources(batch, stake_needs=self.spu)
        if not providers:
            return None
        duration = data.draw(st.integers(1, self.min_duration - 1), label="short duration")
        self._fresh_pair(data, batch, units=1, duration=duration, max_duration=3600,
                         buyer=data.draw(st.sampled_from(batch.buyers)), provider=data.draw(st.sampled_from(providers)))
        return f"an order of {duration} s", _error("DurationTooShort"), self._header(round_id), None

    def _mut_zero_cost(self, data, batch, round_id):
        _, providers = self._resources(batch, stake_needs=self.spu)
        if not providers:
            return None
        # 1 unit at 1 base unit per unit-hour for a minimum lease: 60 / 3600 rounds down to nothing.
        self._fresh_pair(data, batch, units=1, duration=self.min_duration, max_duration=3600, order_market=CHEAP,
                         bid_market=CHEAP, price=1, buyer=data.draw(st.sampled_from(batch.buyers)),
                         provider=data.draw(st.sampled_from(providers)))
        return "a lease that costs nothing", _error("ZeroCostLease"), self._header(round_id), None

    def _mut_market_mismatch(self, data, batch, round_id):
        buyers, providers = self._resources(batch, buyer_needs=5 * UBC * 600 // HOUR, stake_needs=self.spu)
        if not buyers or not providers:
            return None
        self._fresh_pair(data, batch, units=1, duration=600, max_duration=600, bid_market=A100,
                         buyer=data.draw(st.sampled_from(buyers)), provider=data.draw(st.sampled_from(providers)))
        return "an order and a bid of different markets", _error("MarketMismatch"), self._header(round_id), None

    def _mut_underfunded(self, data, batch, round_id):
        price = self._price_for(data, batch, H100)
        _, providers = self._resources(batch, stake_needs=self.spu)
        if not providers:
            return None
        buyer = data.draw(st.sampled_from(batch.buyers), label="buyer")
        free = batch.free_escrow[buyer]
        duration = max(
            -(-(free + 1) * HOUR // price), self.min_duration
        )  # the smallest duration whose cost exceeds `free`
        self._fresh_pair(data, batch, units=1, duration=duration, max_duration=duration, buyer=buyer,
                         provider=data.draw(st.sampled_from(providers)))
        return (f"a lease costing more than {buyer}'s free escrow {free}", _error("InsufficientEscrow"),
                self._header(round_id), None)

    def _mut_understaked(self, data, batch, round_id):
        provider = data.draw(st.sampled_from(batch.providers), label="provider")
        units = batch.free_stake[provider] // self.spu + 1
        price = self._price_for(data, batch, H100)
        buyers, _ = self._resources(batch, buyer_needs=units * price * 60 // HOUR)
        if not buyers:
            return None
        self._fresh_pair(data, batch, units=units, duration=60, max_duration=60, provider=provider,
                         buyer=data.draw(st.sampled_from(buyers)))
        return (f"{units} units from {provider} beyond its free stake", _error("InsufficientFreeStake"),
                self._header(round_id), None)

    # -- escrow ------------------------------------------------------------------------------

    @rule(data=st.data())
    def deposit(self, data) -> None:
        buyer = data.draw(st.sampled_from(self.buyer_addrs), label="buyer")
        balance = self.credits[buyer]
        amount = self._amount(data, balance, "amount")
        expected = (
            _error("ZeroAmount") if amount == 0 else _error("ERC20InsufficientBalance") if amount > balance else None
        )
        if self._send(f"deposit {amount}", expected, self.env.settlement.deposit, amount, sender=self._sender(buyer)):
            self.credits[buyer] -= amount
            self.escrow[buyer][0] += amount

    @rule(data=st.data())
    def request_withdrawal(self, data) -> None:
        """Any non-zero amount may be announced (beyond the free escrow too); it replaces an earlier one."""
        buyer = data.draw(st.sampled_from(self.buyer_addrs), label="buyer")
        amount = self._amount(data, self.escrow[buyer][0], "amount")
        expected = _error("ZeroAmount") if amount == 0 else None
        request = self.env.settlement.requestWithdrawal
        if self._send(f"requestWithdrawal {amount}", expected, request, amount, sender=self._sender(buyer)):
            self.withdrawals[buyer] = [amount, self.t + self.notice]

    @rule(data=st.data())
    def withdraw(self, data) -> None:
        ready = [b for b in self.buyer_addrs if self.withdrawals[b][0] and self.withdrawals[b][1] <= self.t]
        if ready and data.draw(st.integers(0, 9), label="ready buyer?") < 8:
            buyer = data.draw(st.sampled_from(ready), label="buyer")
        else:
            buyer = data.draw(st.sampled_from(self.buyer_addrs), label="buyer")
        requested, ready_at = self.withdrawals[buyer]
        if requested == 0:
            expected = _error("NothingToWithdraw")
        elif self.t < ready_at:
            expected = _error("NoticeNotOver")
        else:
            expected = None
        receipt = self._send("withdraw", expected, self.env.settlement.withdraw, sender=self._sender(buyer))
        if receipt is None:
            return
        amount = min(requested, self.escrow[buyer][0])  # the announced amount, or the free escrow if less now
        [log] = receipt.decode_logs(self.env.settlement.Withdrawn)
        assert log.event_arguments["amount"] == amount, f"Withdrawn {log.event_arguments['amount']} != {amount}"
        self.credits[buyer] += amount
        self.escrow[buyer][0] -= amount
        self.withdrawals[buyer] = [0, 0]

    # -- leases ------------------------------------------------------------------------------

    def _provider_leases(self, data, first: LeaseM, pool: list[LeaseM]) -> list[LeaseM]:
        """`first`, up to two more of its provider's leases from `pool`, and one in ten times a lease of
        another provider."""
        provider = first.provider
        others = [x for x in pool if x.provider == provider and x is not first]
        leases = [first] + (
            data.draw(st.lists(st.sampled_from(others), max_size=2, unique=True), label="more") if others else []
        )
        foreign = [x for x in self.lease_order if x.provider != provider]
        if foreign and data.draw(st.integers(0, 9), label="foreign?") == 0:
            leases.append(data.draw(st.sampled_from(foreign), label="foreign lease"))
        return leases

    @precondition(lambda self: self.lease_order)
    @rule(data=st.data())
    def claim(self, data) -> None:
        """Pays running leases; skips closed and fault-pending ones; reverts only for another provider's lease."""
        first = self._draw_lease(data, self._running)
        provider = first.provider
        leases = self._provider_leases(data, first, self.lease_order)
        foreign = any(x.provider != provider for x in leases)
        expected = _error("NotLeaseProvider") if foreign else None
        receipt = self._send(f"claim {leases}", expected, self.env.settlement.claimRevenue,
                             [x.lease_id for x in leases], sender=self._sender(provider))
        if receipt is None:
            return
        paid_events, closed_events, skipped, total = [], [], [], 0
        for lease in leases:
            if lease.closed:
                skipped.append((lease.lease_id, 0))
            elif self._fault_pending(lease):
                skipped.append((lease.lease_id, 2))
            elif self.t >= lease.end:
                total += self._settle_and_close(lease, self.t, paid_events, closed_events)
            else:
                total += self._pay_up_to(lease, self.t, paid_events)
        self.credits[provider] += total
        self._check_lease_events(receipt, paid_events, closed_events, skipped)

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
        receipt = self._send(
            f"close {lease}", expected, self.env.settlement.close, lease.lease_id, sender=self._sender(caller)
        )
        if receipt is None:
            return
        paid_events, closed_events = [], []
        self.credits[lease.provider] += self._settle_and_close(lease, self.t, paid_events, closed_events)
        self._check_lease_events(receipt, paid_events, closed_events)

    @precondition(lambda self: self.lease_order)
    @rule(data=st.data())
    def heartbeat(self, data) -> None:
        """Heartbeats running leases; skips closed, ended and fault-pending ones; reverts only for another
        provider's lease."""
        first = self._draw_lease(data, lambda x: self._running(x) and self.t < x.end)
        provider = first.provider
        leases = self._provider_leases(data, first, self.lease_order)
        foreign = any(x.provider != provider for x in leases)
        expected = _error("NotLeaseProvider") if foreign else None
        receipt = self._send(
            f"heartbeat {leases}",
            expected,
            self.env.settlement.heartbeat,
            [x.lease_id for x in leases],
            sender=self._sender(provider),
        )
        if receipt is None:
            return
        skipped, beats = [], []
        for lease in leases:
            if lease.closed:
                skipped.append((lease.lease_id, 0))
            elif self.t >= lease.end:
                skipped.append((lease.lease_id, 1))
            elif self._fault_pending(lease):
                skipped.append((lease.lease_id, 2))
            else:
                lease.last_heartbeat = self.t
                beats.append((lease.lease_id, self.t))
        self._check_skipped(receipt, skipped)
        # `Heartbeat` carries no time: a heartbeat is at its block's time.
        got = [(bytes(x.event_arguments["leaseId"]), receipt.timestamp)
               for x in receipt.decode_logs(self.env.settlement.Heartbeat)]
        assert got == beats, f"Heartbeat events {got} != model {beats}"

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
        staked = self.stakes[lease.provider][0]
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
        assert ev["slashed"] <= min(collateral, staked), (
            f"slashed {ev['slashed']}, collateral {collateral}, staked {staked}"
        )
        slashed = collateral * p.slash_bps // BPS
        to_buyer = slashed * p.slash_buyer_bps // BPS
        to_reporter = slashed * p.slash_reporter_bps // BPS
        burned = slashed - to_buyer - to_reporter
        got = (bytes(ev["leaseId"]), ev["reporter"], ev["slashed"], ev["toBuyer"], ev["toReporter"], ev["burned"])
        assert got == (lease.lease_id, reporter, slashed, to_buyer, to_reporter, burned), f"FaultReported {got}"
        self.stakes[lease.provider][0] -= slashed  # an announced unstake stays staked, so it is slashable too
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

    @rule(dt=st.integers(1, 120) | st.integers(121, 900) | st.sampled_from([29, 30, 31, 59, 60, 61, 90, 91, 92]))
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
        for amount, ready_at in self.withdrawals.values():
            if amount:
                times.update({ready_at - 1, ready_at})
        for state in self.nonces.values():
            if state.cancel_at and not state.void:
                times.update({state.cancel_at + self.notice - 1, state.cancel_at + self.notice})
        for _, change_at, _ in self.bindings.values():
            if change_at:
                times.update({change_at - 1, change_at})
        return sorted(t for t in times if t > self.t)

    @precondition(lambda self: self._boundaries())
    @rule(data=st.data())
    def advance_to_boundary(self, data) -> None:
        """Jumps to a lease end, a fault-reportable time, an unbonding end or a notice's end, or one second before."""
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
        receipt = self._send(
            f"redeem {amount}", expected, self.env.bme.redeem, amount, out, sender=self._sender(account)
        )
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
        expected = (
            _error("ZeroAmount") if amount == 0 else _error("ERC20InsufficientBalance") if amount > balance else None
        )
        if self._send(f"stake {amount}", expected, self.env.settlement.stake, amount, sender=self._sender(provider)):
            self.ubt_bal[provider] -= amount
            self.stakes[provider][0] += amount

    @rule(data=st.data())
    def request_unstake(self, data) -> None:
        """Announces an unstake of at most the available stake (free minus already announced);
        the amount stays staked, and lockable, until withdrawn."""
        provider = data.draw(st.sampled_from(self.provider_addrs), label="provider")
        available = self._available_stake(provider)
        amount = self._amount(data, available, "amount")
        expected = (
            _error("ZeroAmount") if amount == 0 else _error("InsufficientFreeStake") if amount > available else None
        )
        unstake = self.env.settlement.requestUnstake
        if self._send(f"requestUnstake {amount}", expected, unstake, amount, sender=self._sender(provider)):
            account = self.stakes[provider]
            account[2] += amount
            account[3] = self.t + max(self.env.params.unbonding_period, self.notice)

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
        receipt = self._send(
            "withdrawUnbonded", expected, self.env.settlement.withdrawUnbonded, sender=self._sender(provider)
        )
        if receipt is None:
            return
        amount = min(account[2], self._free_stake(provider))  # the announced amount, or the free stake if less now
        [log] = receipt.decode_logs(self.env.settlement.UnbondedWithdrawn)
        assert log.event_arguments["amount"] == amount, f"UnbondedWithdrawn {log.event_arguments['amount']} != {amount}"
        self.ubt_bal[provider] += amount
        account[0] -= amount
        account[2] = 0

    # -- nonces and bindings -----------------------------------------------------------------

    def _signer_nonces(self, data) -> tuple[str, list[int]]:
        """A signer and 1-2 nonces of its messages (or, rarely, a nonce it never signed)."""
        signed = sorted({(m.signer, m.message.nonce) for m in self.msgs.values()})
        if not signed:
            return data.draw(st.sampled_from(self.buyer_addrs + self.provider_addrs), label="signer"), [next(_nonces)]
        signer, _ = data.draw(st.sampled_from(signed), label="signer")
        own = sorted(
            {n for s, n in signed if s == signer}
            | {n for (s, n), x in self.nonces.items() if s == signer and x.cancel_at}
        )
        nonces = data.draw(st.lists(st.sampled_from(own), min_size=1, max_size=2, unique=True), label="nonces")
        if data.draw(st.integers(0, 9), label="unknown nonce?") == 0:
            nonces.append(next(_nonces))
        return signer, nonces

    @rule(data=st.data())
    def request_cancel(self, data) -> None:
        signer, nonces = self._signer_nonces(data)
        receipt = self._send(f"requestCancel {nonces}", None, self.env.settlement.requestCancel, nonces,
                             sender=self._sender(signer))
        announced = []
        for nonce in nonces:
            state = self.nonces.setdefault((signer, nonce), NonceM())
            if not state.cancel_at:  # a nonce already announced keeps its first announcement
                state.cancel_at = self.t
                announced.append(nonce)
        got = [x.event_arguments["nonce"] for x in receipt.decode_logs(self.env.settlement.CancelRequested)]
        assert got == announced, f"CancelRequested for {got} != model {announced}"

    @rule(data=st.data())
    def cancel_nonces(self, data) -> None:
        requested = sorted({s for (s, _), x in self.nonces.items() if x.cancel_at})
        if requested and data.draw(st.integers(0, 9), label="announced signer?") < 8:
            signer = data.draw(st.sampled_from(requested), label="signer")
            own = sorted(n for (s, n), x in self.nonces.items() if s == signer and x.cancel_at)
            ready = [n for n in own if self.t >= self.nonces[signer, n].cancel_at + self.notice]
            if ready and data.draw(st.integers(0, 9), label="notice over?") < 8:
                own = ready
            nonces = data.draw(st.lists(st.sampled_from(own), min_size=1, max_size=2, unique=True), label="nonces")
            if data.draw(st.integers(0, 9), label="an unannounced nonce too?") == 0:
                nonces.append(next(_nonces))
        else:
            signer, nonces = self._signer_nonces(data)
        expected = None
        for nonce in nonces:
            state = self.nonces.get((signer, nonce), NonceM())
            if not state.cancel_at:
                expected = _error("CancelNotRequested")
            elif self.t < state.cancel_at + self.notice:
                expected = _error("NoticeNotOver")
            if expected:
                break
        if self._send(
            f"cancelNonces {nonces}", expected, self.env.settlement.cancelNonces, nonces, sender=self._sender(signer)
        ):
            for nonce in nonces:
                self.nonces[signer, nonce].void = True

    @rule(data=st.data())
    def bind_matcher(self, data) -> None:
        """An account asks to trade through a matcher: the change takes a notice period (the
        accounts start bound), and a new request replaces a pending one."""
        account = data.draw(st.sampled_from(self.buyer_addrs + self.provider_addrs), label="account")
        others = [m for m in self.matcher_addrs if m != self._bound(account)]
        matcher = data.draw(st.sampled_from(others + self.matcher_addrs), label="matcher")
        self._send(
            f"bindMatcher {matcher}", None, self.env.settlement.bindMatcher, matcher, sender=self._sender(account)
        )
        binding = self.bindings[account]
        current = self._bound(account)
        pending = binding[1] != 0 and self.t < binding[1]
        if current == ZERO and not pending:
            self.bindings[account] = [matcher, 0, ZERO]
        else:
            self.bindings[account] = [current, self.t + self.notice, matcher]

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        v = self._read_chain()
        self._check_credit_conservation(v)
        self._check_ubt_conservation(v)
        self._check_leases_and_fills(v)
        self._check_stake(v)
        self._check_nonces_and_rounds(v)
        if self.failure:
            raise InvalidSettleAccepted(self.failure)

    def _read_chain(self) -> dict[tuple, Any]:
        settlement = str(self.env.settlement.address)
        holders = [*self.everyone, settlement]
        traders = self.buyer_addrs + self.provider_addrs
        calls = [
            ("credit", "totalSupply"), ("ubt", "totalSupply"),
            ("bme", "totalCreditsMinted"), ("bme", "totalCreditsBurned"),
            ("bme", "totalUbtMinted"), ("bme", "totalUbtBurned"),
            ("settlement", "totalSlashedBurned"),
            *[("settlement", "matchers", m) for m in self.matcher_addrs],
            *[("settlement", "lastRound", m) for m in self.matcher_addrs],
            *[("credit", "balanceOf", a) for a in holders],
            *[("ubt", "balanceOf", a) for a in holders],
            *[("settlement", "escrowOf", b) for b in self.buyer_addrs],
            *[("settlement", "pendingWithdrawal", b) for b in self.buyer_addrs],
            *[("settlement", "availableEscrow", b) for b in self.buyer_addrs],
            *[("settlement", "providers", p) for p in self.provider_addrs],
            *[("settlement", "availableStake", p) for p in self.provider_addrs],
            *[("settlement", "boundMatcherOf", a) for a in traders],
            *[("settlement", "leaseBalances", x.lease_id) for x in self._open()],
            *[("settlement", "remainingOf", m.digest, m.signer, m.message.nonce, m.total) for m in self.msgs.values()],
            *[("settlement", "fills", m.digest) for m in self.msgs.values()],
            *[("settlement", "nonceState", s, n) for s, n in self.nonces],
            *[("settlement", "cancelRequestedAt", s, n) for s, n in self.nonces],
        ]
        return self.env.reader.read(calls)

    def _check_credit_conservation(self, v) -> None:
        """Invariant 1."""
        settlement = str(self.env.settlement.address)
        supply = v["credit", "totalSupply"]
        held = {a: v["credit", "balanceOf", a] for a in self.everyone}
        escrow = {
            b: [v["settlement", "escrowOf", b]["free"], v["settlement", "escrowOf", b]["locked"]]
            for b in self.buyer_addrs
        }
        escrow_total = sum(free + locked for free, locked in escrow.values())
        # What open leases have paid is still counted in their buyers' `locked` (until the close).
        paid_open = sum(x.chain_paid for x in self._open())
        in_settlement = v["credit", "balanceOf", settlement]
        assert in_settlement == escrow_total - paid_open, (
            f"settlement holds {in_settlement} credits, escrow {escrow_total} - paid on open leases {paid_open}"
        )
        assert supply == escrow_total - paid_open + sum(held.values()), (
            f"credit supply {supply} != escrow {escrow_total} - paid open {paid_open} + held by users"
            f" {sum(held.values())}"
        )
        minted, burned = v["bme", "totalCreditsMinted"], v["bme", "totalCreditsBurned"]
        assert supply == minted - burned, f"credit supply {supply} != BME minted {minted} - burned {burned}"
        assert escrow == self.escrow, f"escrow {escrow} != model {self.escrow}"
        assert held == self.credits, f"credit balances {held} != model {self.credits}"
        for buyer in self.buyer_addrs:
            pending = v["settlement", "pendingWithdrawal", buyer]
            got = [pending["amount"], pending["readyAt"]]
            assert got == self.withdrawals[buyer], (
                f"{buyer}: announced withdrawal {got} != model {self.withdrawals[buyer]}"
            )
            available = v["settlement", "availableEscrow", buyer]
            assert available == self._available_escrow(buyer), f"{buyer}: availableEscrow {available}"
        for buyer, (_, locked) in escrow.items():
            owed = sum(x.cost for x in self._open() if x.buyer == buyer)
            assert locked == owed, f"{buyer}: locked escrow {locked} != whole cost of its open leases {owed}"

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
                assert paid + refund <= limit, (
                    f"{lease}: paid {paid} + refunded {refund} > units*price*duration/3600 = {limit}"
                )
                assert paid + refund == limit, f"{lease}: paid {paid} + refunded {refund} != its cost {limit} (dust)"
                continue
            balances = v["settlement", "leaseBalances", lease.lease_id]
            accrued_unpaid, remaining = balances["accruedUnpaid"], balances["remaining"]
            paid = lease.chain_paid
            assert paid + accrued_unpaid + remaining <= limit, (
                f"{lease}: paid {paid} + accrued {accrued_unpaid} + remaining {remaining}"
                f" > units*price*duration/3600 = {limit}"
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
            available = v["settlement", "availableStake", provider]
            assert available == self._available_stake(provider), f"{provider}: availableStake {available}"
            total += staked  # an announced unstake is still part of `staked`
        bonds = {m: v["settlement", "matchers", m]["bond"] for m in self.matcher_addrs}
        assert bonds == self.matcher_bonds, f"matcher bonds {bonds} != {self.matcher_bonds}"
        held = v["ubt", "balanceOf", str(self.env.settlement.address)]
        assert held == total + sum(bonds.values()), (
            f"settlement holds {held} UBT; providers' stake {total} + matcher bonds {sum(bonds.values())}"
        )

    def _check_nonces_and_rounds(self, v) -> None:
        """Invariant 5, and the model's bindings and rounds."""
        for msg in self.msgs.values():
            remaining = v["settlement", "remainingOf", msg.digest, msg.signer, msg.message.nonce, msg.total]
            assert remaining == self._remaining(msg), (
                f"{msg}: remainingOf says {remaining}, the model {self._remaining(msg)} "
                f"(filled {msg.filled} of {msg.total}, nonce {self._nonce(msg)})"
            )
            fill = v["settlement", "fills", msg.digest]
            want = (msg.record, msg.last_round)
            assert (fill["filled"], fill["lastRound"]) == want, f"{msg}: fills {fill} != model {want}"
        for (signer, nonce), state in self.nonces.items():
            got = v["settlement", "nonceState", signer, nonce]
            want = (state.claimed_by is not None, state.void)
            assert (got["claimed"], got["voided"]) == want, (
                f"nonce {nonce} of {signer}: (claimed, void) {got} != {want}"
            )
            requested = v["settlement", "cancelRequestedAt", signer, nonce]
            assert requested == state.cancel_at, (
                f"nonce {nonce} of {signer}: cancel requested at {requested} != {state.cancel_at}"
            )
        for account in self.buyer_addrs + self.provider_addrs:
            bound = v["settlement", "boundMatcherOf", account]
            assert bound == self._bound(account), f"{account}: bound to {bound}, model {self._bound(account)}"
        for matcher in self.matcher_addrs:
            last = v["settlement", "lastRound", matcher]
            assert last == self.last_round[matcher], f"{matcher}: lastRound {last} != model {self.last_round[matcher]}"


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


def test_random_action_sequences_keep_invariants(
    market, chain, ubt, credit, bme, oracle, settlement, domain, params, deployer, matcher, buyers, providers, outsider
):
    for buyer in buyers:
        market.mint_credits(buyer, 3_000 * UBC)
        settlement.deposit(2_000 * UBC, sender=buyer)
        market.bind(buyer)
        market.give_ubt(buyer, 200 * UBT)
        ubt.approve(bme, MAX_UINT, sender=buyer)
    for provider in providers:
        market.stake_provider(provider, 6)
        market.give_ubt(provider, 500 * UBT)
        ubt.approve(bme, MAX_UINT, sender=provider)
        ubt.approve(settlement, MAX_UINT, sender=provider)
    # The deployer bonds as a second matcher; the last buyer and provider trade through it, and
    # any account may move its binding between the two.
    ubt.approve(settlement, params.min_matcher_bond, sender=deployer)
    settlement.bondMatcher(params.min_matcher_bond, deployer, sender=deployer)
    for account in (buyers[-1], providers[-1]):
        settlement.bindMatcher(ZERO, sender=account)  # unbinding takes the notice period
    chain.mine(timestamp=chain.pending_timestamp + params.notice_period)
    for account in (buyers[-1], providers[-1]):
        market.bind(account, deployer)
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
        matcher_bonds={str(m.address): settlement.matchers(m).bond for m in (matcher, deployer)},
        last_round={str(m.address): settlement.lastRound(m) for m in (matcher, deployer)},
        bound={str(a.address): settlement.boundMatcherOf(a) for a in [*buyers, *providers]},
    )
    for contract in (settlement, credit, ubt, bme, oracle):
        for error in contract.contract_type.errors:
            ERRORS["0x" + keccak(text=error.selector)[:4].hex()] = error.name
    assert ERRORS["0x" + keccak(text="InsufficientEscrow(address,uint256,uint256)")[:4].hex()] == "InsufficientEscrow"
    reader = ChainReader(chain.provider.uri, dict(settlement=settlement, credit=credit, ubt=ubt, bme=bme))
    ProtocolMachine.env = Env(chain, ubt, credit, bme, oracle, settlement, domain, params, deployer, matcher,
                              deployer, buyers, providers, outsider, start, reader)
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
            suppress_health_check=[
                HealthCheck.function_scoped_fixture,
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
            ],
        ),
    )


# ----------------------------------------------------------------------------------------------
# Minimal reproductions of what the state machine found
# ----------------------------------------------------------------------------------------------
#
# Before the nonce redesign `settle` counted the units left of each order and bid per array entry,
# not per signed message, so a batch listing the same signed order (or bid) twice could overfill
# it, lose a fill record, or reset a recorded partial fill. `settle` now refuses a second message
# with the same (signer, nonce) in one batch (`DuplicateNonce`); these tests pin that down.


def _fund(market, buyers, providers) -> None:
    market.fund_buyer(buyers[0], 100 * UBC)
    for provider in providers[:3]:
        market.stake_provider(provider, 4)


def test_an_order_listed_twice_in_one_batch_is_refused(market, settlement, buyers, providers):
    _fund(market, buyers, providers)
    order = market.order(buyers[0], units=2)
    bids = [market.bid(providers[0], capacity=2), market.bid(providers[1], capacity=2)]
    with reverts(settlement.DuplicateNonce):
        market.settle([order, order], bids, [(0, 0, 1), (1, 1, 1)], {H100: 2 * UBC})
    assert settlement.remainingOf(order[0].digest(market.domain), buyers[0], order[0].nonce, 2) == 2


def test_a_bid_listed_twice_in_one_batch_is_refused(market, settlement, buyers, providers):
    _fund(market, buyers, providers)
    bid = market.bid(providers[0], capacity=4)
    with reverts(settlement.DuplicateNonce):
        market.settle([market.order(buyers[0], units=2)], [bid, bid], [(0, 0, 2)], {H100: 2 * UBC})


def test_two_messages_sharing_a_nonce_fill_at_most_one(market, settlement, buyers, providers):
    _fund(market, buyers, providers)
    first = market.order(buyers[0], units=2)
    second = market.order(buyers[0], units=2, nonce=first[0].nonce, duration=HOUR)
    bids = [market.bid(providers[0], capacity=2), market.bid(providers[1], capacity=2)]
    with reverts(settlement.DuplicateNonce):
        market.settle([first, second], bids, [(0, 0, 1), (1, 1, 1)], {H100: 2 * UBC})
    market.settle([first], bids[:1], [(0, 0, 1)], {H100: 2 * UBC})
    with reverts(settlement.NonceUsed):  # the nonce is claimed by the first order
        market.settle([second], bids[1:], [(0, 0, 1)], {H100: 2 * UBC})
    assert settlement.remainingOf(second[0].digest(market.domain), buyers[0], second[0].nonce, 2) == 0
    assert settlement.remainingOf(first[0].digest(market.domain), buyers[0], first[0].nonce, 2) == 1
