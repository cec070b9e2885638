"""Submission: the chain side of settling a round, as operations that return typed outcomes.

`rounds` drives each batch through the store's states (pending -> signed -> mined, or dead) and
calls these; nothing here changes the store, raises to steer its caller, or holds its locks.

- Batches: a round is split so each transaction stays well inside the block gas limit.
- Simulation first (`prepare`): each batch is dry-run (`eth_estimateGas`) before it is signed. A
  refusal names the message at fault by a custom error; one that names none (or a message the ABI
  encoder refuses) is found by encoding each message alone, then by bisecting the batch, so a
  round is never stuck behind one message.
- Deadlines: each batch carries the chain time of the state it was simulated against plus half
  the notice period. Nothing but this matcher's own batches can lower what `settle` reads before
  a notice period has passed, so a batch that simulated successfully lands or expires whole; and
  after its deadline the contract refuses it (`BatchExpired`), so a transaction not mined by then
  can never land.
- Following a transaction (`follow`): the same signed raw transaction is broadcast again until
  the chain decides it: a receipt (landed, with the fills of its `LeaseOpened` events, or
  reverted), its nonce used by another transaction, or its deadline passed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from web3.exceptions import ContractCustomError, ContractLogicError, TransactionNotFound, Web3RPCError
from web3.logs import DISCARD

from underbid.chain.retry import TRANSIENT, retry_rpc
from underbid.chain.view import ChainView, DecodedError, RoundOnChain
from underbid.matcher.store import BatchPayload, Match, MessageKind, SignedTx, Store, StoredMessage
from underbid.protocol.eip712 import recover_signer

log = logging.getLogger("underbid.matcher.submission")

__all__ = ["retry_rpc", "split_batches", "Submitter"]

#: Gas the batch header, price list and round bookkeeping cost, and a generous per-match figure
#: (measured ~88k at 100 matches; see docs/PROTOCOL.md), used only to size batches.
BATCH_BASE_GAS = 150_000
GAS_PER_MATCH = 110_000
#: Share of the block gas limit one batch may use.
BLOCK_SHARE = 0.5
#: Seconds between two broadcasts of the same pending transaction, and between two looks at it.
REBROADCAST_EVERY = 5.0
POLL_EVERY = 0.25


class SubmissionError(Exception):
    """A batch could not be built (a message of it is missing from the store)."""


@dataclass(frozen=True)
class Simulated:
    """The batch settles against the latest state: sign it with this gas and deadline."""

    gas: int
    deadline: int


@dataclass(frozen=True)
class Refused:
    """The batch does not settle; `culprit` is the message to blame (None: none could be found)."""

    culprit: str | None
    reason: str


@dataclass(frozen=True)
class Landed:
    """Mined with success: the fills (digest -> units) its LeaseOpened events record."""

    gas_used: int
    fills: dict[str, int]


@dataclass(frozen=True)
class NotLanded:
    """Known never to land: reverted, its nonce used by another transaction, or past its deadline."""

    reason: str
    reverted: bool = False


@dataclass(frozen=True)
class StillPending:
    """Neither mined nor excluded yet (the chain has not decided)."""

    reason: str


TxOutcome = Landed | NotLanded | StillPending


class Broadcast(StrEnum):
    SENT = "sent"
    ALREADY_KNOWN = "already known"  # the node has it: an earlier broadcast got through
    REFUSED = "refused"  # e.g. nonce too low: the receipt and the nonce say what happened
    LOST = "lost"  # no answer: it may or may not have got through


def split_batches(matches: list[Match], prices: dict[str, int], block_gas_limit: int) -> list[BatchPayload]:
    """Splits a round's matches, in order, into batch payloads that fit `block_gas_limit`."""
    per_batch = max(1, int((block_gas_limit * BLOCK_SHARE - BATCH_BASE_GAS) // GAS_PER_MATCH))
    return [BatchPayload.of(matches[start:start + per_batch], prices)
            for start in range(0, max(len(matches), 1), per_batch)]


def _already_known(exc: Web3RPCError) -> bool:
    """True if the node refused a broadcast because it already holds that very transaction."""
    response = exc.rpc_response if isinstance(exc.rpc_response, dict) else {}
    error = response.get("error")
    message = str(error.get("message", "")) if isinstance(error, dict) else str(exc)
    return any(s in message.lower() for s in ("already known", "already imported", "known transaction"))


class Submitter:
    def __init__(self, chain: ChainView, store: Store, account: LocalAccount, receipt_timeout: float = 120.0):
        self.chain = chain
        self.w3 = chain.w3
        self.store = store
        self.account = account
        self.receipt_timeout = receipt_timeout
        #: Set when the process stops: `follow` returns at once instead of waiting on the chain.
        self.stopping = threading.Event()

    # ----- building calls -----

    def _messages(self, payload: BatchPayload) -> dict[str, StoredMessage]:
        found = {}
        orders = set(m.order for m in payload.matches)
        for digest in payload.digests:
            kind = MessageKind.ORDER if digest in orders else MessageKind.BID
            stored = self.store.get_message(digest, kind)
            if stored is None:
                raise SubmissionError(f"{kind.value} {digest} is in a batch but not in the store")
            found[digest] = stored
        return found

    def _call(self, header: tuple, payload: BatchPayload, stored: dict[str, StoredMessage]) -> Any:
        orders = list(dict.fromkeys(m.order for m in payload.matches))
        bids = list(dict.fromkeys(m.bid for m in payload.matches))
        index = {d: i for i, d in enumerate(orders)} | {d: i for i, d in enumerate(bids)}
        return self.chain.settlement.functions.settle(
            header,
            [stored[d].message.as_call_tuple() for d in orders],
            [stored[d].signature for d in orders],
            [stored[d].message.as_call_tuple() for d in bids],
            [stored[d].signature for d in bids],
            [(index[m.order], index[m.bid], m.units) for m in payload.matches],
            [(bytes.fromhex(k[2:]), v) for k, v in payload.prices.items()],
        )

    def _unencodable(self, header: tuple, stored: dict[str, StoredMessage]) -> Refused | None:
        """The first message the ABI encoder refuses on its own, if one is."""
        for digest, s in stored.items():
            is_order = s.kind is MessageKind.ORDER
            one = [s.message.as_call_tuple()], [s.signature]
            args = (*one, [], []) if is_order else ([], [], *one)
            try:
                self.chain.settlement.functions.settle(header, *args, [], [])._encode_transaction_data()
            except Exception as exc:  # noqa: BLE001 - any refusal of the encoder blames this message
                return Refused(digest, f"{s.kind.value} {digest} cannot be ABI-encoded: {exc}")
        return None

    # ----- the culprit of a simulated revert -----

    def _culprit(self, error: DecodedError, payload: BatchPayload, stored: dict[str, StoredMessage]) -> str | None:
        """The digest of the message a custom error blames, if it blames one."""
        orders = list(dict.fromkeys(m.order for m in payload.matches))
        bids = list(dict.fromkeys(m.bid for m in payload.matches))
        args = error.args
        if error.name == "MessageForOtherMatcher":
            return "0x" + bytes(args["digest"]).hex()
        if error.name == "ZeroCostLease":  # too short or too small an order for any cost
            return payload.matches[args["matchIndex"]].order
        if "orderIndex" in args and error.name != "MarketMismatch" and args["orderIndex"] < len(orders):
            return orders[args["orderIndex"]]
        if "bidIndex" in args and args["bidIndex"] < len(bids):
            return bids[args["bidIndex"]]
        if error.name in ("NonceUsed", "DuplicateNonce"):
            # The (newest, for a duplicate) message of the batch with that signer and nonce.
            key = (args["signer"], args["nonce"])
            same = [d for d, s in stored.items() if (s.message.signer, s.message.nonce) == key]
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

    # ----- simulation -----

    def batch_deadline(self, payload: BatchPayload, stored: dict[str, StoredMessage]) -> int:
        """The deadline for a batch simulated now.

        The chain time of the state it is simulated against plus half the notice period, so it
        lands before any announced withdrawal, unstake, cancellation or binding change can take
        effect, or not at all; and never past the deadline of a message it carries, so a message
        expiring in the mempool cannot revert it (the batch expires whole instead).
        """
        head = retry_rpc(self.chain.fresh_head)
        deadline = head.timestamp + self.chain.notice_period // 2
        return min([deadline, *(s.message.deadline for s in stored.values())])

    def _dry_run(self, header: tuple, payload: BatchPayload, stored: dict[str, StoredMessage]) -> int | Refused:
        """Gas of the batch, or why it is refused (with the culprit its custom error names)."""
        try:
            call = self._call(header, payload, stored)
            call._encode_transaction_data()
        except Exception as exc:  # noqa: BLE001 - a message the encoder refuses is found below
            return self._unencodable(header, stored) or Refused(None, f"batch cannot be encoded: {exc}")
        try:
            return retry_rpc(lambda: call.estimate_gas({"from": self.account.address}))
        except (ContractCustomError, ContractLogicError, Web3RPCError) as exc:
            error = self.chain.errors.from_exception(exc)
            culprit = self._culprit(error, payload, stored) if error else None
            return Refused(culprit, f"round {header[0]} batch {header[1]} reverts: {error or exc}")

    def prepare(self, round_id: int, index: int, final: bool, payload: BatchPayload) -> Simulated | Refused:
        """Dry-runs a batch against the latest state; a refusal names its culprit if any can be found."""
        stored = self._messages(payload)
        # The head is read before the dry run, so the state simulated is at least that recent.
        deadline = self.batch_deadline(payload, stored)
        header = (round_id, index, final, deadline)
        outcome = self._dry_run(header, payload, stored)
        if isinstance(outcome, int):
            return Simulated(outcome, deadline)
        if outcome.culprit is None:
            return self._bisect(header, payload, stored, outcome)
        return outcome

    def _bisect(
        self, header: tuple, payload: BatchPayload, stored: dict[str, StoredMessage], first: Refused
    ) -> Refused:
        """Finds the message behind a refusal that names none, by dry-running halves of the batch."""
        matches = payload.matches
        while len(matches) > 1:
            halves = (matches[: len(matches) // 2], matches[len(matches) // 2:])
            for half in halves:
                outcome = self._dry_run(header, BatchPayload.of(half, payload.prices), stored)
                if isinstance(outcome, Refused):
                    if outcome.culprit is not None:
                        return outcome
                    matches = half
                    break
            else:
                # Each half settles alone: the failure needs both (shared funds the chain does not
                # name); blame the newest message, the one that came last to the shared account.
                newest = max((d for m in matches for d in (m.order, m.bid)), key=lambda d: stored[d].received_at)
                return Refused(newest, f"{first.reason}; the batch fails only whole: dropping its newest message")
        (match,) = matches
        for d in (match.order, match.bid):
            if not self._signed_by_its_signer(d, stored[d]):
                return Refused(d, f"{first.reason}; bisected to {stored[d].kind.value} {d}, whose signature or digest"
                                  " does not check out")
        # One match fails: blame the bid only if its order settles with another bid of the batch
        # (orders carry no receipt, so wrongly leaving one out costs no provider a promise).
        others = dict.fromkeys(m.bid for m in payload.matches if m.bid != match.bid and m.market == match.market)
        for other in others:
            trial = BatchPayload.of([Match(match.order, other, 1, match.market)], payload.prices)
            if isinstance(self._dry_run(header, trial, stored), int):
                return Refused(match.bid, f"{first.reason}; bisected to bid {match.bid}")
        return Refused(match.order, f"{first.reason}; bisected to order {match.order}")

    def _signed_by_its_signer(self, digest: str, stored: StoredMessage) -> bool:
        """True if the stored body hashes to `digest` and its signature recovers to its signer."""
        try:
            computed = stored.message.digest(self.chain.book.domain)
            signer = recover_signer(computed, stored.signature)
            return "0x" + computed.hex() == digest and signer == stored.message.signer
        except Exception:  # noqa: BLE001 - a signature that cannot even be recovered does not check out
            return False

    # ----- signing and sending -----

    def sign(self, round_id: int, index: int, final: bool, payload: BatchPayload, simulated: Simulated) -> SignedTx:
        """Signs the batch with the account's next nonce (every earlier batch is decided by now)."""
        stored = self._messages(payload)
        call = self._call((round_id, index, final, simulated.deadline), payload, stored)
        nonce = retry_rpc(lambda: self.w3.eth.get_transaction_count(self.account.address, "pending"))
        tx = call.build_transaction({
            "from": self.account.address,
            "nonce": nonce,
            "gas": int(simulated.gas * 1.2) + 50_000,
            "chainId": self.chain.book.chain_id,
        })
        signed = self.account.sign_transaction(tx)
        return SignedTx(nonce, bytes(signed.raw_transaction), "0x" + bytes(signed.hash).hex(), simulated.deadline)

    def broadcast(self, raw: bytes) -> Broadcast:
        """Sends a signed transaction once; what became of it is for `fate` to say."""
        try:
            self.w3.eth.send_raw_transaction(raw)
            return Broadcast.SENT
        except Web3RPCError as exc:
            if _already_known(exc):
                return Broadcast.ALREADY_KNOWN
            log.info("broadcast refused (%s): the chain decides", exc)
            return Broadcast.REFUSED
        except TRANSIENT as exc:
            log.info("broadcast answer lost (%s): the chain decides", type(exc).__name__)
            return Broadcast.LOST

    def fate(self, tx: SignedTx) -> TxOutcome:
        """What the chain says of a signed transaction now. The head and the nonce are read before
        the receipt, so a transaction mined by then has its receipt seen."""
        address = self.account.address
        head = retry_rpc(self.chain.fresh_head)
        used = retry_rpc(lambda: self.w3.eth.get_transaction_count(address, head.number))
        try:
            receipt = retry_rpc(lambda: self.w3.eth.get_transaction_receipt(HexStr(tx.tx_hash)))
        except TransactionNotFound:
            receipt = None
        if receipt is not None:
            if receipt["status"] != 1:
                return NotLanded(f"transaction {tx.tx_hash} reverted", reverted=True)
            return Landed(receipt["gasUsed"], self._fills(receipt))
        nonce = tx.nonce
        if nonce is None:  # recorded by an older version: learn the nonce from the node
            try:
                nonce = retry_rpc(lambda: self.w3.eth.get_transaction(HexStr(tx.tx_hash)))["nonce"]
            except TransactionNotFound:
                return NotLanded(f"transaction {tx.tx_hash} is unknown to the node and has no receipt")
        if used > nonce:
            # A node may count a block's transactions before it serves their receipts: the
            # transaction itself says whether it is the one that used the nonce.
            try:
                mined_in = retry_rpc(lambda: self.w3.eth.get_transaction(HexStr(tx.tx_hash))).get("blockNumber")
            except TransactionNotFound:
                mined_in = None
            if mined_in is not None:
                return StillPending(f"transaction {tx.tx_hash} is mined in block {mined_in}; no receipt served yet")
            return NotLanded(f"nonce {nonce} was used by another transaction")
        if tx.deadline and head.timestamp > tx.deadline:
            return NotLanded(f"chain time {head.timestamp} is past the batch deadline {tx.deadline} (BatchExpired)")
        return StillPending(f"transaction {tx.tx_hash} (nonce {nonce}) is not mined yet")

    def follow(self, tx: SignedTx, timeout: float, just_sent: bool = False) -> TxOutcome:
        """Broadcasts the same raw transaction again until the chain decides it, or `timeout`
        (`just_sent`: the first broadcast was just made, so the next waits its turn)."""
        end = time.monotonic() + timeout
        next_broadcast = time.monotonic() + REBROADCAST_EVERY if just_sent else 0.0
        while True:
            # Asked before each broadcast: a transaction past its deadline is not sent again (it
            # could only be mined to revert, spending a nonce for nothing).
            outcome = self.fate(tx)
            if not isinstance(outcome, StillPending) or time.monotonic() >= end:
                return outcome
            if tx.raw is not None and time.monotonic() >= next_broadcast:
                self.broadcast(tx.raw)
                next_broadcast = time.monotonic() + REBROADCAST_EVERY
            if self.stopping.wait(POLL_EVERY):
                return outcome

    def _fills(self, receipt: Any) -> dict[str, int]:
        """digest -> units filled, from the LeaseOpened events of a receipt: what really landed."""
        fills: dict[str, int] = {}
        for event in self.chain.settlement.events.LeaseOpened().process_receipt(receipt, errors=DISCARD):
            for key in ("orderDigest", "bidDigest"):
                digest = "0x" + bytes(event["args"][key]).hex()
                fills[digest] = fills.get(digest, 0) + int(event["args"]["units"])
        return fills

    def round_state(self, round_id: int) -> RoundOnChain:
        return retry_rpc(lambda: self.chain.round_state(self.account.address, round_id))
