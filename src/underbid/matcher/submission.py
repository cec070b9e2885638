"""Submission: turns a cleared round into `settle` transactions and sees them confirmed.

- Batches: a round is split so each transaction stays well inside the block gas limit.
- Simulation first: each batch is estimated (an `eth_estimateGas` dry run) before it is signed. A
  revert names the message at fault with a custom error. While no batch of the round has landed,
  the matcher drops that message and clears the round again (`NeedsReclear`): removing matches
  from an optimal allocation could leave a cheaper receipted bid idle while a dearer one wins,
  which a provider could prove on chain. Once a batch has landed the round's prices are fixed, so
  later batches drop the message's matches and go ahead.
- Deadlines: each batch carries the chain time of the state it was simulated against plus half
  the notice period. Nothing but this matcher's own batches can lower what `settle` reads before
  a notice period has passed (withdrawals, unstakes, cancellations and binding changes all wait
  for it), so a batch that simulated successfully either lands successfully or not at all.
- Crash safety: the signed transaction's hash is committed to the store before it is broadcast.
  The contract accepts batches only in order and never settles a finished round twice, so
  resending after a crash is safe, and `reconcile` reads the round's on-chain state first.
- RPC errors are retried with exponential backoff; reverts are not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from eth_account.signers.local import LocalAccount
from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted

from underbid.matcher import failpoints
from underbid.chain.view import ChainView, DecodedError
from underbid.matcher.store import MessageKind, Store, StoredMessage, StoredRound

log = logging.getLogger("underbid.matcher.submission")
T = TypeVar("T")

#: Gas the batch header, price list and round bookkeeping cost, and a generous per-match figure
#: (measured ~88k at 100 matches; see docs/PROTOCOL.md), used only to size batches.
BATCH_BASE_GAS = 150_000
GAS_PER_MATCH = 110_000
#: Share of the block gas limit one batch may use.
BLOCK_SHARE = 0.5


class SubmissionError(Exception):
    """A batch could not be settled (other than by a message the matcher could drop)."""


class NeedsReclear(Exception):
    """Nothing of the round has landed and its allocation can no longer be sent as it is."""

    def __init__(self, culprit: str | None, reason: str):
        super().__init__(reason)
        self.culprit = culprit
        self.reason = reason


@dataclass(frozen=True)
class SettledBatch:
    batch: int
    tx_hash: str
    gas_used: int
    matches: int


def split_batches(matches: list[dict[str, Any]], prices: dict[str, int], block_gas_limit: int) -> list[dict[str, Any]]:
    """Splits a round's matches into batch payloads that fit `block_gas_limit`.

    A payload names messages by digest: `{"matches": [[order, bid, units], ...], "prices": {...}}`.
    """
    per_batch = max(1, int((block_gas_limit * BLOCK_SHARE - BATCH_BASE_GAS) // GAS_PER_MATCH))
    batches = []
    for start in range(0, max(len(matches), 1), per_batch):
        chunk = matches[start : start + per_batch]
        markets = {m["market"] for m in chunk}
        batches.append({"matches": chunk, "prices": {k: v for k, v in prices.items() if k in markets}})
    return batches


def retry_rpc(call: Callable[[], T], attempts: int = 5, base_delay: float = 0.2) -> T:
    """Runs `call`, retrying connection failures and timeouts with exponential backoff."""
    for attempt in range(attempts):
        try:
            return call()
        except (requests.ConnectionError, requests.Timeout, TimeExhausted, ConnectionError) as exc:
            if attempt == attempts - 1:
                raise
            delay = base_delay * 2**attempt
            log.warning("rpc error (%s); retrying in %.1fs", exc.__class__.__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class Submitter:
    def __init__(
        self,
        chain: ChainView,
        store: Store,
        account: LocalAccount,
        receipt_timeout: float = 120.0,
        confirm_guard: Callable[[], AbstractContextManager[object]] = nullcontext,
    ):
        self.chain = chain
        self.w3 = chain.w3
        self.store = store
        self.account = account
        self.receipt_timeout = receipt_timeout
        #: Held while a round's fills are applied (the matcher pauses intake meanwhile).
        self.confirm_guard = confirm_guard

    # ----- building calls -----

    def _call_args(
        self, round_id: int, batch: int, final: bool, deadline: int, payload: dict[str, Any]
    ) -> tuple[tuple, list[StoredMessage]]:
        orders: dict[str, int] = {}
        bids: dict[str, int] = {}
        for m in payload["matches"]:
            orders.setdefault(m["order"], len(orders))
            bids.setdefault(m["bid"], len(bids))
        stored_orders = [self._message(d, MessageKind.ORDER) for d in orders]
        stored_bids = [self._message(d, MessageKind.BID) for d in bids]
        args = (
            (round_id, batch, final, deadline),
            [s.message.as_call_tuple() for s in stored_orders],
            [s.signature for s in stored_orders],
            [s.message.as_call_tuple() for s in stored_bids],
            [s.signature for s in stored_bids],
            [(orders[m["order"]], bids[m["bid"]], m["units"]) for m in payload["matches"]],
            [(bytes.fromhex(k[2:]), v) for k, v in payload["prices"].items()],
        )
        return args, stored_orders + stored_bids

    def _message(self, digest: str, kind: MessageKind) -> StoredMessage:
        stored = self.store.get_message(digest, kind)
        if stored is None:
            raise SubmissionError(f"{kind.value} {digest} is in a batch but not in the store")
        return stored

    # ----- the culprit of a simulated revert -----

    def _culprit(self, error: DecodedError, payload: dict[str, Any]) -> str | None:
        """The digest of the message a custom error blames, if it blames one."""
        orders = list(dict.fromkeys(m["order"] for m in payload["matches"]))
        bids = list(dict.fromkeys(m["bid"] for m in payload["matches"]))
        args = error.args
        if error.name == "MessageForOtherMatcher":
            return "0x" + bytes(args["digest"]).hex()
        if error.name == "ZeroCostLease":  # too short or too small an order for any cost
            return payload["matches"][args["matchIndex"]]["order"]
        if "orderIndex" in args and error.name != "MarketMismatch":
            return orders[args["orderIndex"]]
        if "bidIndex" in args:
            return bids[args["bidIndex"]]
        stored = {d: s for d in orders + bids if (s := self.store.get_message(d)) is not None}
        if error.name in ("NonceUsed", "DuplicateNonce"):
            # The (newest, for a duplicate) message of the batch with that signer and nonce.
            same = [d for d, s in stored.items() if s.message.signer == args["signer"] and s.message.nonce == args["nonce"]]
            if same:
                return max(same, key=lambda d: stored[d].received_at)
        # AccountNotBound(account), InsufficientEscrow(buyer), InsufficientFreeStake(provider), ...:
        # drop the newest message of that account in the batch (the one that overdrew it).
        who = args.get("buyer") or args.get("provider") or args.get("account") or args.get("signer")
        if who is not None:
            pool = [d for d, s in stored.items() if s.message.signer == who]
            if pool:
                return max(pool, key=lambda d: stored[d].received_at)
        return None

    # ----- sending -----

    def settle_round(self, stored: StoredRound) -> list[SettledBatch]:
        """Sends every batch of `stored` not yet on chain, in order, and confirms the round.

        Resumes from the round's on-chain batch count, so it is safe to call again after a crash.
        """
        on_chain = retry_rpc(lambda: self.chain.round_state(self.account.address, stored.id))
        results = []
        for batch in stored.batches:
            if batch.batch < on_chain.batches:
                if batch.state != "confirmed":
                    self.store.record_batch_confirmed(stored.id, batch.batch, self._gas_of(batch.tx_hash), batch.tx_hash)
                continue
            if on_chain.final:
                # The round takes no more batches (its span passed, say, after a crash): the
                # batches left out hold only the pricier bids of their markets (see the matcher).
                log.warning("round %s is final on chain after %s batches; batch %s is not sent",
                            stored.id, on_chain.batches, batch.batch)
                break
            results.append(self._send_batch(stored, batch.batch, batch.payload))
        self._confirm(stored.id)
        return results

    def batch_deadline(self, payload: dict[str, Any]) -> int:
        """The deadline for a batch simulated now.

        The chain time of the state it is simulated against plus half the notice period, so it
        lands before any announced withdrawal, unstake, cancellation or binding change can take
        effect, or not at all; and never past the deadline of a message it carries, so a message
        expiring in the mempool cannot revert it (the batch expires whole instead).
        """
        head = retry_rpc(self.chain.fresh_head)
        deadline = head.timestamp + self.chain.notice_period // 2
        digests = {m["order"] for m in payload["matches"]} | {m["bid"] for m in payload["matches"]}
        for digest in digests:
            stored = self.store.get_message(digest)
            if stored is not None:
                deadline = min(deadline, stored.message.deadline)
        return deadline

    def simulate(
        self, round_id: int, index: int, final: bool, deadline: int, payload: dict[str, Any]
    ) -> tuple[int, None] | tuple[None, tuple[str | None, str]]:
        """Dry-runs a batch. Returns (gas, None), or (None, (culprit digest or None, reason))."""
        args, _ = self._call_args(round_id, index, final, deadline, payload)
        call = self.chain.settlement.functions.settle(*args)
        try:
            return retry_rpc(lambda: call.estimate_gas({"from": self.account.address})), None
        except (ContractCustomError, ContractLogicError) as exc:
            error = self.chain.errors.from_exception(exc)
            culprit = self._culprit(error, payload) if error else None
            return None, (culprit, f"round {round_id} batch {index} reverts: {error or exc}")

    def _send_batch(self, stored: StoredRound, index: int, payload: dict[str, Any]) -> SettledBatch:
        final = index == len(stored.batches) - 1
        for _ in range(len(payload["matches"]) + 1):
            # The head is read before the dry run, so the state simulated is at least that recent.
            deadline = self.batch_deadline(payload)
            gas, failure = self.simulate(stored.id, index, final, deadline, payload)
            if failure is None:
                break
            culprit, reason = failure
            if culprit is None:  # nothing to drop would change the outcome
                raise SubmissionError(reason)
            if index == 0:
                raise NeedsReclear(culprit, reason)
            log.warning("round %s: dropping %s: %s", stored.id, culprit, reason)
            self.store.drop(culprit, f"dropped from round {stored.id}: {reason}")
            payload = _without(payload, culprit)
            self.store.replace_batch_payload(stored.id, index, payload)
        else:
            raise SubmissionError(f"round {stored.id} batch {index}: could not find a settleable batch")
        args, _ = self._call_args(stored.id, index, final, deadline, payload)
        call = self.chain.settlement.functions.settle(*args)

        tx = call.build_transaction(
            {
                "from": self.account.address,
                "nonce": retry_rpc(lambda: self.w3.eth.get_transaction_count(self.account.address, "pending")),
                "gas": int(gas * 1.2) + 50_000,
                "chainId": self.chain.book.chain_id,
            }
        )
        signed = self.account.sign_transaction(tx)
        tx_hash = "0x" + bytes(signed.hash).hex()
        self.store.record_sent(stored.id, index, tx_hash)  # before broadcast: the recovery handle
        retry_rpc(lambda: self._broadcast(signed.raw_transaction))
        failpoints.hit("after_broadcast")
        receipt = retry_rpc(lambda: self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout))
        if receipt["status"] != 1:
            reason = f"round {stored.id} batch {index}: transaction {tx_hash} reverted"
            if index == 0:  # state moved between the dry run and the block: clear again
                raise NeedsReclear(None, reason)
            raise SubmissionError(reason)
        self.store.record_batch_confirmed(stored.id, index, receipt["gasUsed"], tx_hash)
        return SettledBatch(index, tx_hash, receipt["gasUsed"], len(payload["matches"]))

    def _broadcast(self, raw: bytes) -> None:
        try:
            self.w3.eth.send_raw_transaction(raw)
        except ValueError as exc:  # the node already has it: a retry after a lost answer
            if "already known" not in str(exc) and "nonce too low" not in str(exc):
                raise

    def _gas_of(self, tx_hash: str | None) -> int | None:
        if not tx_hash:
            return None
        try:
            return self.w3.eth.get_transaction_receipt(tx_hash)["gasUsed"]
        except Exception:  # noqa: BLE001 - a replaced or unknown hash only loses the gas figure
            return None

    def _confirm(self, round_id: int) -> None:
        """Applies the fills of every landed batch once the round is final on chain."""
        on_chain = retry_rpc(lambda: self.chain.round_state(self.account.address, round_id))
        stored = self.store.get_round(round_id)
        if not on_chain.final or stored is None:
            raise SubmissionError(f"round {round_id}: {on_chain.batches} batches on chain but the round is not final")
        fills: dict[str, int] = {}
        for batch in stored.batches[:on_chain.batches]:
            for m in batch.payload["matches"]:
                fills[m["order"]] = fills.get(m["order"], 0) + m["units"]
                fills[m["bid"]] = fills.get(m["bid"], 0) + m["units"]
        with self.confirm_guard():
            self.store.confirm_round(round_id, fills)

    def await_sent(self, tx_hash: str) -> None:
        """Gives a transaction broadcast before a crash a moment to be mined."""
        try:
            self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=5)
        except Exception:  # noqa: BLE001 - never broadcast, dropped or pending: the chain state decides
            pass


def _without(payload: dict[str, Any], digest: str) -> dict[str, Any]:
    matches = [m for m in payload["matches"] if digest not in (m["order"], m["bid"])]
    markets = {m["market"] for m in matches}
    return {"matches": matches, "prices": {k: v for k, v in payload["prices"].items() if k in markets}}
