"""The client library behind the `underbid` CLI: chain reads and transactions, the matcher's HTTP
API, and a local journal of the orders and bids this machine signed.

Everything a command does goes through here, so the demo and the tests run the same code as the
CLI. Errors are one-line exceptions (`UnderbidError` and its subclasses); reverts are decoded to
the contract's custom error by name, with a hint on what to do.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3 import Web3
from web3.exceptions import ContractLogicError, ContractPanicError, TimeExhausted, Web3RPCError
from web3.logs import DISCARD
from web3.types import TxReceipt

from underbid.chain.deployment import AddressBook
from underbid.chain.view import DecodedError, ErrorDecoder, connect
from underbid.protocol.eip712 import Bid, Order
from underbid.protocol.units import format_credits, format_ubt

HOUR = 3600
MAX_UINT256 = 2**256 - 1


def tx_hash_of(receipt: Any) -> str:
    """The receipt's transaction hash as `0x…` (HexBytes 1.x prints it without the prefix)."""
    return "0x" + bytes(receipt["transactionHash"]).hex()


class UnderbidError(Exception):
    """A runtime error with a one-line message (the CLI prints `error: <message>`, exit code 1)."""


class ChainError(UnderbidError):
    """A transaction or call the chain refused; `decoded` is the contract's custom error, if any."""

    def __init__(self, message: str, decoded: DecodedError | None = None):
        super().__init__(message)
        self.decoded = decoded


class MatcherError(UnderbidError):
    """The matcher is unreachable or refused a request."""


# ----- errors: custom error name -> units of its amount arguments, and what to do -----

_CREDIT_ARGS = {
    "InsufficientEscrow": ("required", "free"),
    "MintBelowMinimum": ("creditsOut", "minimum"),
}
_UBT_ARGS = {
    "InsufficientFreeStake": ("required", "free"),
    "RedemptionHalted": ("netMinted", "requested", "cap"),
}
_TIME_ARGS = {
    "UnbondingNotFinished": ("unlocksAt",), "HeartbeatNotMissed": ("reportableAt",), "NoticeNotOver": ("readyAt",),
    "ChallengeWindowClosed": ("closedAt",), "ExitDelayNotOver": ("exitAt",),
    "BidExpiredBeforeWitness": ("deadline", "witnessStart"), "StakeDecreasedAfterReceipt": ("decreasedAt", "issuedAt"),
}
#: `LeaseSkipped` reasons (the contract's SkipReason enum), as printed.
SKIP_REASONS = {0: "closed", 1: "ended", 2: "fault pending"}

_HINTS: dict[str, str] = {
    "InsufficientEscrow": "deposit more credits (`underbid escrow deposit`); only free escrow can be used or withdrawn",
    "InsufficientFreeStake": "stake more UBT (`underbid provider stake`); collateral of running leases stays locked",
    "NotRegistered": "register first (`underbid provider register --metadata <uri>`)",
    "AlreadyRegistered": "this account is already a registered provider",
    "ZeroAmount": "the amount must be greater than zero",
    "PriceNotSet": "the oracle has no price yet: the updater must post one",
    "StalePrice": "the oracle price is too old: the updater must post a fresh one"
    " (devnet: `underbid devnet advance` re-posts it)",
    "MintBelowMinimum": "mint more: the BME has a minimum mint (`underbid bme`)",
    "SlippageExceeded": "the price moved: retry, or allow more slippage with --slippage",
    "RedemptionHalted": "the circuit breaker paused redemptions: redeem less or later (`underbid bme`)",
    "NothingUnbonding": "request an unstake first (`underbid provider unstake`)",
    "NoticeNotOver": "the notice period is not over yet: run the command again after it",
    "NothingToWithdraw": "announce a withdrawal first (`underbid escrow withdraw --amount <credits>`)",
    "AccountNotBound": "bind the account to this matcher first (`underbid account bind`)",
    "MessageForOtherMatcher": "the message names another matcher",
    "CancelNotRequested": "request the cancellation first (`underbid order cancel` / `underbid bid cancel`)",
    "DurationTooShort": "leases must last at least the protocol's minimum lease duration",
    "ReceiptSignerFixed": "this matcher's receipt signer is fixed while it is bonded",
    "UnbondingNotFinished": "wait until the unbonding period is over",
    "UnknownLease": "no lease has this id (`underbid lease list`)",
    "LeaseAlreadyClosed": "the lease is already closed",
    "NotLeaseBuyer": "only the buyer may close a lease before its end",
    "NotLeaseProvider": "only the lease's provider may do this",
    "LeaseEnded": "the lease is over: claim it instead (`underbid lease claim`)",
    "HeartbeatMissed": "a heartbeat was missed and the lease can be reported; it can no longer be heartbeated",
    "HeartbeatNotMissed": "the provider's heartbeats are current: the lease cannot be reported yet",
    "FaultPending": "a heartbeat was missed, so the lease can now end only through a fault report"
    " (`underbid report --lease <id>`), which refunds the buyer and slashes the provider",
    "MatcherNotBonded": "this matcher has no bond: it cannot settle",
    "ChallengeWindowClosed": "the witness lease's challenge window is over",
    "AlreadyChallenged": "this bid already won a challenge for this round",
    "NotBidProvider": "only the bid's provider may challenge with it",
    "BidFullyFilled": "your bid was filled completely: the allocation did not pass over it",
    "BidCancelled": "you requested the cancellation of this bid, so the round could leave it out",
    "BidNonceTaken": "another message of yours took this bid's nonce",
    "BidExpiredBeforeWitness": "the bid expired before the witness lease opened, so the round could leave it out",
    "StakeDecreasedAfterReceipt": "your stake went down after the receipt, so the matcher could leave the bid out",
    "ProviderLeftMatcher": "you changed your matcher binding after the receipt, so the matcher could leave the bid out",
    "WitnessNotPricier": "the witness lease's bid is not priced above yours",
    "WitnessDurationTooLong": "the witness lease is longer than your bid accepts",
    "WitnessNotInRound": "no such lease was opened in that round",
    "WitnessBeforeReceipt": "the witness round is before the round your receipt names",
    "WitnessMarketMismatch": "the witness lease is in another market",
    "SwapNotShorter": "your own lease in that round is not shorter than the witness lease",
    "ReceiptMatcherMismatch": "the receipt's matcher is not the matcher your bid names",
    "ReceiptBidMismatch": "the receipt names another bid",
    "RoundNotFinal": "that round is not final on chain yet",
    "NonceUsed": "this nonce is already used or cancelled",
    "CreditNonTransferable": "credits move only to and from the protocol (escrow, BME)",
    "ERC20InsufficientBalance": "the account holds too few tokens",
    "ERC20InsufficientAllowance": "the token allowance is too low",
    "AccessControlUnauthorizedAccount": "this account lacks the role needed",
}


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_error(decoded: DecodedError) -> str:
    """`InsufficientEscrow(buyer=0x.., required=5 UBC, free=1 UBC): deposit more credits ...`."""
    parts = []
    for key, value in decoded.args.items():
        if key in _CREDIT_ARGS.get(decoded.name, ()):
            shown = f"{format_credits(value)} UBC"
        elif key in _UBT_ARGS.get(decoded.name, ()):
            shown = f"{format_ubt(value)} UBT"
        elif key in _TIME_ARGS.get(decoded.name, ()) and isinstance(value, int) and value < 2**40:
            shown = _when(value)
        elif isinstance(value, bytes):
            shown = "0x" + value.hex()
        else:
            shown = str(value)
        parts.append(f"{key}={shown}")
    text = f"{decoded.name}({', '.join(parts)})"
    hint = _HINTS.get(decoded.name)
    return f"{text}: {hint}" if hint else text


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


# ----- reads -----


@dataclass(frozen=True)
class ProviderInfo:
    address: str
    registered: bool
    staked: int
    locked: int
    unbonding: int
    unbonding_end: int
    metadata: str

    @property
    def free(self) -> int:
        """Stake not locked as collateral (it may still be announced to leave)."""
        return self.staked - self.locked

    @property
    def available(self) -> int:
        """Stake a matcher may commit to new leases: free stake minus any announced unstake."""
        return max(self.staked - self.locked - self.unbonding, 0)


class LeaseEnd(StrEnum):
    """Why a lease ended, as the buyer and the provider are told."""

    EXPIRED = "expired"
    CLOSED_BY_BUYER = "closed by buyer"
    FAULT_REPORTED = "fault reported"


@dataclass(frozen=True)
class LeaseView:
    id: str
    round: int
    matcher: str
    buyer: str
    provider: str
    market: str
    units: int
    price: int
    start: int
    end: int
    closed: bool
    paid_until: int
    last_heartbeat: int
    claimable: int
    remaining: int
    collateral: int
    reportable_at: int | None
    faulted: bool
    now: int

    @property
    def cost(self) -> int:
        return self.units * self.price * (self.end - self.start) // HOUR

    def accrued_until(self, t: int) -> int:
        t = max(self.start, min(t, self.end))
        return self.units * self.price * (t - self.start) // HOUR

    @property
    def paid(self) -> int:
        return self.accrued_until(self.paid_until or self.start)

    @property
    def accrued(self) -> int:
        """What the buyer has paid or owes so far (paid to the provider plus claimable now)."""
        if self.closed:
            return self.paid
        return self.cost - self.remaining

    @property
    def status(self) -> str:
        """closed, faulted (closed by a fault report), faulty (reportable now: it can end only through
        a report), ended (past its end: claim or close it), running."""
        if self.closed:
            return "faulted" if self.faulted else "closed"
        if self.reportable_at is not None and self.now >= self.reportable_at:
            return "faulty"
        if self.now >= self.end:
            return "ended"
        return "running"

    @property
    def active(self) -> bool:
        """Running and still heartbeat-able."""
        return self.status == "running"

    @property
    def end_reason(self) -> LeaseEnd | None:
        """Why the lease ended (None while it runs): its term ran out, its buyer closed it early, or
        a missed heartbeat was reported. A lease closed by a claim after its end counts as expired."""
        if self.faulted:
            return LeaseEnd.FAULT_REPORTED
        if self.closed:
            return LeaseEnd.EXPIRED if self.paid_until >= self.end else LeaseEnd.CLOSED_BY_BUYER
        if self.now >= self.end:
            return LeaseEnd.EXPIRED
        return None

    @property
    def heartbeat_due(self) -> int | None:
        """When the lease becomes reportable without a new heartbeat (None once it cannot be)."""
        return self.reportable_at if self.active else None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        reason = self.end_reason
        data.update(status=self.status, cost=self.cost, accrued=self.accrued, paid=self.paid,
                    end_reason=None if reason is None else reason.value, heartbeat_due=self.heartbeat_due)
        return data


class Client:
    """A connection to one Underbid deployment, optionally acting as one account."""

    def __init__(self, rpc: str, deployment: str | Path | AddressBook, account: LocalAccount | None = None, *,
                 timeout: float = 30):
        try:
            self.book = deployment if isinstance(deployment, AddressBook) else AddressBook.load(deployment)
        except FileNotFoundError:
            raise UnderbidError(
                f"no address book at {deployment}: start a devnet (`underbid devnet up`) or pass --deployment"
            ) from None
        except ValueError as exc:
            raise UnderbidError(f"the address book {deployment} is not valid: {_one_line(exc)[:200]}") from None
        try:
            self.w3 = connect(rpc, timeout=timeout)
        except ConnectionError:
            raise UnderbidError(
                f"no Ethereum node answers at {rpc}: start a devnet (`underbid devnet up`) or pass --rpc"
            ) from None
        self.rpc = rpc
        chain_id = self.w3.eth.chain_id
        if chain_id != self.book.chain_id:
            raise UnderbidError(
                f"the node at {rpc} is chain {chain_id} but the address book {deployment}"
                f" is for chain {self.book.chain_id}"
            )
        self.chain_id = chain_id
        if not self.w3.eth.get_code(self.book.address("UnderbidSettlement")):
            raise UnderbidError(
                f"no settlement contract at {self.book.address('UnderbidSettlement')} on {rpc}:"
                " the address book is from another chain (redeploy, or `underbid devnet up`)"
            )
        self.account = account
        self.ubt = self.book.contract(self.w3, "UnderbidToken")
        self.credit = self.book.contract(self.w3, "UnderbidCredit")
        self.oracle = self.book.contract(self.w3, "PriceOracle")
        self.bme = self.book.contract(self.w3, "BurnMintEquilibrium")
        self.settlement = self.book.contract(self.w3, "UnderbidSettlement")
        self.court = self.book.contract(self.w3, "MatcherCourt") if "MatcherCourt" in self.book.contracts else None
        self.errors = ErrorDecoder([c.abi for c in self.book.contracts.values()])
        self._stake_per_unit: int | None = None
        self._limits: dict[str, int] = {}
        self._block_gas_limit: int | None = None
        #: called with a short description before each transaction is sent (progress displays)
        self.on_tx: Callable[[str], None] | None = None
        #: set by `underbid.devnet.node.require_devnet` once this chain is known to be a local devnet
        self._devnet_ok = False

    def with_account(self, account: LocalAccount | None) -> Client:
        """The same connection acting as `account` (no new RPC connection)."""
        other = copy.copy(self)
        other.account = account
        return other

    # ----- identity -----

    @property
    def address(self) -> ChecksumAddress:
        if self.account is None:
            raise UnderbidError("this command needs an account: pass --account (or set $UNDERBID_ACCOUNT)")
        return self.account.address

    @property
    def domain(self):
        return self.book.domain

    def deployment_key(self) -> str:
        """Identifies this deployment even when a fresh devnet reuses the same addresses."""
        first = self.w3.eth.get_block(self.book.block)
        return f"{self.chain_id}:{self.book.address('UnderbidSettlement')}:{first['hash'].hex()}"

    # ----- calls and transactions -----

    def call(self, fn) -> Any:
        try:
            return fn.call()
        except (ContractLogicError, ContractPanicError) as exc:
            raise self._revert(exc) from None

    def _revert(self, exc: BaseException) -> ChainError:
        decoded = self.errors.from_exception(exc)
        if decoded is not None:
            return ChainError(describe_error(decoded), decoded)
        if isinstance(exc, ContractPanicError):
            return ChainError(f"the contract panicked: {_one_line(exc)}")
        return ChainError(f"the contract refused: {_one_line(getattr(exc, 'message', None) or exc)}")

    def transact(self, fn, what: str) -> TxReceipt:
        """Sends `fn` from the account and waits for its receipt. Reverts raise ChainError."""
        sender = self.address
        if self.on_tx:
            self.on_tx(what)
        try:
            tx = fn.build_transaction({
                "from": sender,
                "nonce": self.w3.eth.get_transaction_count(sender, "pending"),
                "chainId": self.chain_id,
            })
        except (ContractLogicError, ContractPanicError) as exc:
            raise self._revert(exc) from None
        except Web3RPCError as exc:
            raise ChainError(self._rpc_message(exc, what)) from None
        # Headroom: the node estimates against the latest block, but the transaction runs in the next
        # one, at a later timestamp, which can take a costlier path (a lease that accrued nothing
        # at estimation pays its provider a token transfer a second later). Unused gas is not paid.
        tx["gas"] = min(int(tx["gas"] * 1.5) + 60_000, self._gas_cap())
        assert self.account is not None  # self.address above raised otherwise
        signed = self.account.sign_transaction(tx)
        try:
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120, poll_latency=0.05)
        except Web3RPCError as exc:
            raise ChainError(self._rpc_message(exc, what)) from None
        except TimeExhausted:
            raise ChainError(f"{what}: transaction 0x{bytes(tx_hash).hex()} was not mined within 120 s") from None
        if receipt["status"] != 1:
            raise ChainError(f"{what}: transaction 0x{bytes(tx_hash).hex()} reverted")
        return receipt

    def _gas_cap(self) -> int:
        if self._block_gas_limit is None:
            self._block_gas_limit = int(self.w3.eth.get_block("latest")["gasLimit"])
        return self._block_gas_limit

    def _rpc_message(self, exc: Web3RPCError, what: str) -> str:
        text = _one_line(getattr(exc, "message", None) or exc)
        if "insufficient funds" in text.lower():
            where = "`underbid devnet fund` on a devnet" if self.book.devnet else "send it ETH on this chain"
            return f"{what}: account {self.address} has too little ETH for gas ({where})"
        return f"{what}: the node refused the transaction: {text[:300]}"

    # ----- reads -----

    def block_time(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    @property
    def stake_per_unit(self) -> int:
        if self._stake_per_unit is None:
            self._stake_per_unit = self.settlement.functions.stakePerUnit().call()
        return self._stake_per_unit

    def _limit(self, name: str) -> int:
        if name not in self._limits:
            self._limits[name] = int(getattr(self.settlement.functions, name)().call())
        return self._limits[name]

    @property
    def notice_period(self) -> int:
        """Seconds between announcing a withdrawal, unstake, cancellation or matcher change and doing it."""
        return self._limit("noticePeriod")

    @property
    def min_lease_duration(self) -> int:
        """The shortest lease (order duration) settlement opens, in seconds."""
        return self._limit("minLeaseDuration")

    def eth_balance(self, who: str) -> int:
        return self.w3.eth.get_balance(Web3.to_checksum_address(who))

    def ubt_balance(self, who: str) -> int:
        return self.ubt.functions.balanceOf(who).call()

    def credit_balance(self, who: str) -> int:
        return self.credit.functions.balanceOf(who).call()

    def escrow(self, who: str) -> tuple[int, int]:
        free, locked = self.settlement.functions.escrowOf(who).call()
        return free, locked

    def pending_withdrawal(self, who: str) -> tuple[int, int]:
        """(amount, readyAt) of `who`'s announced escrow withdrawal; (0, 0) when none."""
        amount, ready_at = self.settlement.functions.pendingWithdrawal(who).call()
        return int(amount), int(ready_at)

    def available_escrow(self, who: str) -> int:
        """Free escrow minus any announced withdrawal: what new orders can use."""
        return int(self.settlement.functions.availableEscrow(who).call())

    def provider(self, who: str) -> ProviderInfo:
        staked, locked, unbonding, unbonding_end, _, registered = self.settlement.functions.providers(who).call()
        metadata = self.provider_metadata(who) if registered else ""
        return ProviderInfo(who, registered, staked, locked, unbonding, unbonding_end, metadata)

    def provider_metadata(self, who: str) -> str:
        """`who`'s metadata URI: the latest `ProviderRegistered` / `MetadataUpdated` event's (the
        contract publishes it in events only, not in storage)."""
        events = self.settlement.events
        filters = {"provider": Web3.to_checksum_address(who)}
        logs = [
            log for event in (events.ProviderRegistered, events.MetadataUpdated)
            for log in event.get_logs(from_block=self.book.block, argument_filters=filters)
        ]
        if not logs:
            return ""
        latest = max(logs, key=lambda log: (log["blockNumber"], log["logIndex"]))
        return str(latest["args"]["metadataURI"])

    def params(self) -> dict[str, int]:
        """The core's tunable parameters by name (read from the ABI, so new fields just appear)."""
        abi: Any = next(e for e in self.settlement.abi if e.get("type") == "function" and e.get("name") == "params")
        names = [o["name"] for o in abi["outputs"]]
        values = self.settlement.functions.params().call()
        return dict(zip(names, values if isinstance(values, (list, tuple)) else [values], strict=True))

    def bme_state(self) -> dict[str, Any]:
        bme = self.bme.functions
        price, updated_at = self.oracle.functions.lastPosted().call()
        max_age = self.oracle.functions.maxAge().call()
        now = self.block_time()
        burned, minted = bme.totalUbtBurned().call(), bme.totalUbtMinted().call()
        redeemable = bme.redeemableUbt().call()
        return {
            "price": price,
            "price_usd": str(price / 10**8),
            "price_updated_at": updated_at,
            "price_age": now - updated_at if updated_at else None,
            "price_max_age": max_age,
            "price_fresh": bool(price) and now <= updated_at + max_age,
            "mint_spread_bps": bme.mintSpreadBps().call(),
            "min_mint_credits": bme.minMintCredits().call(),
            "total_ubt_burned": burned,
            "total_ubt_minted": minted,
            "net_ubt_burned": burned - minted,
            "total_credits_minted": bme.totalCreditsMinted().call(),
            "total_credits_burned": bme.totalCreditsBurned().call(),
            "credit_supply": self.credit.functions.totalSupply().call(),
            "ubt_supply": self.ubt.functions.totalSupply().call(),
            "total_slashed_burned": self.settlement.functions.totalSlashedBurned().call(),
            "redeem_cap": bme.redeemCap().call(),
            "redeem_window": bme.window().call(),
            "net_minted_in_window": bme.netMintedInWindow().call(),
            "redeemable_ubt": redeemable,
            "redemption_halted": redeemable == 0,
        }

    # ----- leases -----

    def lease_events(self, *, buyer: str | None = None) -> list[dict[str, Any]]:
        filters = {"buyer": Web3.to_checksum_address(buyer)} if buyer else None
        logs = self.settlement.events.LeaseOpened.get_logs(from_block=self.book.block, argument_filters=filters)
        return [dict(log["args"]) for log in logs]

    def faulted_leases(self) -> set[str]:
        logs = self.settlement.events.FaultReported.get_logs(from_block=self.book.block)
        return {"0x" + bytes(log["args"]["leaseId"]).hex() for log in logs}

    def leases(
        self, *, buyer: str | None = None, provider: str | None = None, include_closed: bool = True
    ) -> list[LeaseView]:
        """Leases from `LeaseOpened` logs, with live figures. `buyer`/`provider` filter (either matches)."""
        who = {w.lower() for w in (buyer, provider) if w}
        events = self.lease_events(buyer=buyer) if buyer and not provider else self.lease_events()
        if who:
            events = [e for e in events if (buyer and e["buyer"].lower() == buyer.lower())
                      or (provider and e["provider"].lower() == provider.lower())]
        now = self.block_time()
        faulted = self.faulted_leases() if events else set()
        views = []
        for event in events:
            view = self.lease(bytes(event["leaseId"]), event, now=now, faulted=faulted)
            if include_closed or not view.closed:
                views.append(view)
        views.sort(key=lambda v: (v.start, v.id))
        return views

    def lease(self, lease_id: bytes, event: dict[str, Any] | None = None, *, now: int | None = None,
              faulted: set[str] | None = None) -> LeaseView:
        s = self.settlement.functions
        buyer, start, end, closed, _version, provider, units, price, paid_until, last_hb = self.call(
            s.getLease(lease_id)
        )
        claimable, remaining, collateral = s.leaseBalances(lease_id).call()
        reportable = None if closed else s.faultReportableAt(lease_id).call()
        if reportable is not None and reportable >= 2**255:
            reportable = None
        lid = "0x" + lease_id.hex()
        if event is None:
            found = [e for e in self.lease_events(buyer=buyer) if bytes(e["leaseId"]) == lease_id]
            event = found[0] if found else {"round": 0, "market": b"\0" * 32}
        return LeaseView(
            id=lid,
            round=int(event["round"]),
            matcher=event.get("matcher") or "",
            buyer=buyer,
            provider=provider,
            market="0x" + bytes(event["market"]).hex(),
            units=units,
            price=price,
            start=start,
            end=end,
            closed=closed,
            paid_until=paid_until or start,
            last_heartbeat=last_hb or start,
            claimable=claimable,
            remaining=remaining,
            collateral=collateral,
            reportable_at=reportable,
            faulted=lid in (faulted if faulted is not None else self.faulted_leases()),
            now=now if now is not None else self.block_time(),
        )

    @staticmethod
    def resolve_lease(prefix: str, leases: Iterable[LeaseView]) -> LeaseView:
        """The one lease whose id starts with `prefix` (hex, with or without 0x)."""
        text = prefix.lower().removeprefix("0x")
        if not text or any(c not in "0123456789abcdef" for c in text):
            raise UnderbidError(f"lease id {prefix!r} is not hex: give the id or a unique prefix of it")
        hits = [v for v in leases if v.id[2:].startswith(text)]
        if not hits:
            raise UnderbidError(f"no lease id starts with {prefix!r} (`underbid lease list` shows yours)")
        if len(hits) > 1:
            raise UnderbidError(f"lease prefix {prefix!r} matches {len(hits)} leases: give more digits")
        return hits[0]

    # ----- buyer actions -----

    def quote_mint(self, ubt_in: int) -> int:
        return self.call(self.bme.functions.quoteMint(ubt_in))

    def quote_redeem(self, credits_in: int) -> int:
        return self.call(self.bme.functions.quoteRedeem(credits_in))

    def _ensure_allowance(self, token, spender: str, amount: int, what: str) -> None:
        if token.functions.allowance(self.address, spender).call() < amount:
            self.transact(token.functions.approve(spender, amount), f"approve {what}")

    def mint_credits(self, ubt_in: int, slippage_bps: int = 50) -> dict[str, Any]:
        """Burns `ubt_in` UBT for credits (approving the BME first). Checks before any transaction."""
        balance = self.ubt_balance(self.address)
        if balance < ubt_in:
            raise UnderbidError(
                f"ERC20InsufficientBalance(account={self.address}, balance={format_ubt(balance)} UBT,"
                f" needed={format_ubt(ubt_in)} UBT): get more UBT first"
            )
        quote = self.quote_mint(ubt_in)
        minimum = self.bme.functions.minMintCredits().call()
        if quote < minimum:
            raise UnderbidError(
                f"MintBelowMinimum(creditsOut={format_credits(quote)} UBC, minimum={format_credits(minimum)} UBC):"
                " burn more UBT"
            )
        min_out = quote * (10_000 - slippage_bps) // 10_000
        self._ensure_allowance(self.ubt, self.book.address("BurnMintEquilibrium"), ubt_in, "UBT for the BME")
        receipt = self.transact(self.bme.functions.mintCredits(ubt_in, min_out), "mint credits")
        event = self.bme.events.CreditsMinted().process_receipt(receipt, errors=DISCARD)[0]["args"]
        return {"ubt_burned": event["ubtBurned"], "credits_minted": event["creditsMinted"], "price": event["price"],
                "spread_bps": int(self.bme.functions.mintSpreadBps().call()), "tx": tx_hash_of(receipt)}

    def redeem(self, credits_in: int, slippage_bps: int = 50) -> dict[str, Any]:
        balance = self.credit_balance(self.address)
        if balance < credits_in:
            raise UnderbidError(
                f"ERC20InsufficientBalance(account={self.address}, balance={format_credits(balance)} UBC,"
                f" needed={format_credits(credits_in)} UBC): credits in escrow must be withdrawn first"
                " (`underbid escrow withdraw`)"
            )
        quote = self.quote_redeem(credits_in)
        receipt = self.transact(self.bme.functions.redeem(credits_in, quote * (10_000 - slippage_bps) // 10_000),
                                "redeem credits")
        event = self.bme.events.CreditsRedeemed().process_receipt(receipt, errors=DISCARD)[0]["args"]
        return {"credits_burned": event["creditsBurned"], "ubt_minted": event["ubtMinted"], "price": event["price"],
                "tx": tx_hash_of(receipt)}

    def deposit(self, amount: int) -> dict[str, Any]:
        balance = self.credit_balance(self.address)
        if balance < amount:
            raise UnderbidError(
                f"ERC20InsufficientBalance(account={self.address}, balance={format_credits(balance)} UBC,"
                f" needed={format_credits(amount)} UBC): mint credits first (`underbid credits mint`)"
            )
        receipt = self.transact(self.settlement.functions.deposit(amount), "deposit credits")
        return {"deposited": amount, "tx": tx_hash_of(receipt)}

    def request_withdrawal(self, amount: int) -> dict[str, Any]:
        """Announces a withdrawal of up to `amount` free credits (replacing any earlier one); it can be
        completed with `complete_withdrawal` from `ready_at`. Checks the free escrow first."""
        free, _ = self.escrow(self.address)
        if free < amount:
            # The contract's own refusal, found before paying gas for it.
            raise ChainError(
                f"InsufficientEscrow(buyer={self.address}, required={format_credits(amount)} UBC,"
                f" free={format_credits(free)} UBC): only free escrow can be withdrawn",
                DecodedError("InsufficientEscrow", {"buyer": self.address, "required": amount, "free": free}),
            )
        receipt = self.transact(self.settlement.functions.requestWithdrawal(amount), "announce a withdrawal")
        event = self.settlement.events.WithdrawalRequested().process_receipt(receipt, errors=DISCARD)[0]["args"]
        return {"requested": int(event["amount"]), "ready_at": int(event["readyAt"]),
                "tx": tx_hash_of(receipt)}

    def complete_withdrawal(self) -> dict[str, Any]:
        """Completes the announced withdrawal (after its notice): sends min(announced, free escrow)."""
        amount, ready_at = self.pending_withdrawal(self.address)
        if amount == 0:
            raise UnderbidError(f"NothingToWithdraw(buyer={self.address}): {_HINTS['NothingToWithdraw']}")
        left = ready_at - self.block_time()
        if left > 0:
            raise UnderbidError(
                f"NoticeNotOver(readyAt={_when(ready_at)}): the withdrawal of {format_credits(amount)} UBC is"
                f" announced; the notice is not over (ready in {left} s)"
            )
        receipt = self.transact(self.settlement.functions.withdraw(), "withdraw credits")
        event = self.settlement.events.Withdrawn().process_receipt(receipt, errors=DISCARD)[0]["args"]
        return {"withdrawn": int(event["amount"]), "requested": amount, "tx": tx_hash_of(receipt)}

    # ----- matcher binding -----

    def binding(self, who: str) -> dict[str, Any]:
        """`who`'s matcher binding: `matcher` (bound now, or None), and a pending change (`next`, `change_at`)."""
        s = self.settlement.functions
        current = s.boundMatcherOf(who).call()
        matcher, change_at, nxt, requested_at = s.bindingOf(who).call()
        now = self.block_time()
        pending = bool(change_at) and now < change_at
        return {
            "account": who,
            "matcher": None if int(current, 16) == 0 else current,
            "pending": pending,
            "next": (None if int(nxt, 16) == 0 else nxt) if pending else None,
            "change_at": int(change_at) if pending else 0,
            "change_left": max(int(change_at) - now, 0) if pending else 0,
            "requested_at": int(requested_at),
        }

    def bind_matcher(self, matcher: str) -> dict[str, Any]:
        """Binds this account to `matcher` (at once when unbound; otherwise after the notice period)."""
        matcher = Web3.to_checksum_address(matcher)
        receipt = self.transact(self.settlement.functions.bindMatcher(matcher), "bind to the matcher")
        event = self.settlement.events.MatcherBound().process_receipt(receipt, errors=DISCARD)[0]["args"]
        effective = int(event["effectiveAt"])
        at = int(self.w3.eth.get_block(receipt["blockNumber"])["timestamp"])
        return {"account": self.address, "matcher": matcher, "effective_at": effective, "immediate": effective <= at,
                "tx": tx_hash_of(receipt)}

    def ensure_bound(self, matcher: str) -> dict[str, Any] | None:
        """Binds this account to `matcher` if it is unbound with no change pending (one transaction).

        Returns the binding result when a transaction was sent, else None. Raises UnderbidError when the
        account is bound to another matcher or a change is pending: those take the notice period.
        """
        matcher = Web3.to_checksum_address(matcher)
        state = self.binding(self.address)
        if state["pending"]:
            raise UnderbidError(
                f"the account {self.address} has a pending matcher change to {state['next'] or 'none'}"
                f" (effective in {state['change_left']} s): a matcher takes no messages from it until then"
            )
        if state["matcher"] == matcher:
            return None
        if state["matcher"] is not None:
            raise UnderbidError(
                f"AccountNotBound(account={self.address}, matcher={matcher}): the account is bound to"
                f" {state['matcher']}; move it with `underbid account bind {matcher}` (takes effect after the"
                f" {self.notice_period} s notice)"
            )
        return self.bind_matcher(matcher)

    def bonded_matchers(self) -> list[str]:
        """Matchers that bonded on this deployment and may settle now."""
        logs = self.settlement.events.MatcherBonded.get_logs(from_block=self.book.block)
        seen = list(dict.fromkeys(log["args"]["matcher"] for log in logs))
        return [m for m in seen if self.settlement.functions.isBondedMatcher(m).call()]

    # ----- provider actions -----

    def register(self, uri: str) -> dict[str, Any]:
        receipt = self.transact(self.settlement.functions.register(uri), "register provider")
        return {"registered": True, "metadata": uri, "tx": tx_hash_of(receipt)}

    def stake(self, amount: int) -> dict[str, Any]:
        info = self.provider(self.address)
        if not info.registered:
            raise UnderbidError(f"NotRegistered(provider={self.address}): {_HINTS['NotRegistered']}")
        balance = self.ubt_balance(self.address)
        if balance < amount:
            raise UnderbidError(
                f"ERC20InsufficientBalance(account={self.address}, balance={format_ubt(balance)} UBT,"
                f" needed={format_ubt(amount)} UBT): get more UBT first"
            )
        self._ensure_allowance(self.ubt, self.book.address("UnderbidSettlement"), amount, "UBT for staking")
        receipt = self.transact(self.settlement.functions.stake(amount), "stake UBT")
        return {"staked": amount, "tx": tx_hash_of(receipt)}

    def request_unstake(self, amount: int) -> dict[str, Any]:
        """Announces that `amount` of stake leaves after the unbonding period; it stays lockable until then."""
        info = self.provider(self.address)
        if amount > info.available:
            raise UnderbidError(
                f"InsufficientFreeStake(provider={self.address}, required={format_ubt(amount)} UBT,"
                f" free={format_ubt(info.available)} UBT): only stake neither locked nor already unbonding"
                " can be unstaked"
            )
        receipt = self.transact(self.settlement.functions.requestUnstake(amount), "request unstake")
        event = self.settlement.events.UnstakeRequested().process_receipt(receipt, errors=DISCARD)[0]["args"]
        return {"unbonding": amount, "unlocks_at": event["unlocksAt"], "tx": tx_hash_of(receipt)}

    def withdraw_unbonded(self) -> dict[str, Any]:
        """Sends the unbonded stake: min(announced, free stake) once the unbonding period is over."""
        announced = self.provider(self.address).unbonding
        receipt = self.transact(self.settlement.functions.withdrawUnbonded(), "withdraw unbonded stake")
        event = self.settlement.events.UnbondedWithdrawn().process_receipt(receipt, errors=DISCARD)[0]["args"]
        return {"withdrawn": event["amount"], "announced": announced, "tx": tx_hash_of(receipt)}

    # ----- leases -----

    def _skipped(self, receipt) -> list[dict[str, str]]:
        """The `LeaseSkipped` events of a heartbeat or claim transaction: [{lease, reason}]."""
        return [{"lease": "0x" + bytes(e["args"]["leaseId"]).hex(),
                 "reason": SKIP_REASONS.get(int(e["args"]["reason"]), str(e["args"]["reason"]))}
                for e in self.settlement.events.LeaseSkipped().process_receipt(receipt, errors=DISCARD)]

    def _paid_out(self, receipt) -> int:
        """Credits a claim or close paid to providers: the credit token's `Transfer`s from the
        settlement (lease payments have no settlement event of their own; only the settlement moves
        credits, and a claim or close moves them only to providers)."""
        credit, settlement = self.credit.address, self.settlement.address
        return sum(e["args"]["value"] for e in self.credit.events.Transfer().process_receipt(receipt, errors=DISCARD)
                   if e["address"] == credit and e["args"]["from"] == settlement)

    def heartbeat(self, lease_ids: list[str]) -> dict[str, Any]:
        """Heartbeats `lease_ids` in one transaction; closed, ended and fault-pending leases are skipped
        by the contract (listed in `skipped` with the reason), the rest in `leases`."""
        receipt = self.transact(self.settlement.functions.heartbeat([bytes.fromhex(i[2:]) for i in lease_ids]),
                                f"heartbeat {len(lease_ids)} lease(s)")
        skipped = self._skipped(receipt)
        gone = {s["lease"] for s in skipped}
        return {
            "leases": [i for i in lease_ids if i.lower() not in gone],
            "skipped": skipped,
            "at": self.w3.eth.get_block(receipt["blockNumber"])["timestamp"],
            "tx": tx_hash_of(receipt),
        }

    def claim(self, lease_ids: list[str]) -> dict[str, Any]:
        """Claims what `lease_ids` accrued; closed and fault-pending leases are skipped (in `skipped`)."""
        receipt = self.transact(self.settlement.functions.claimRevenue([bytes.fromhex(i[2:]) for i in lease_ids]),
                                f"claim {len(lease_ids)} lease(s)")
        paid = self._paid_out(receipt)
        closed = ["0x" + bytes(e["args"]["leaseId"]).hex()
                  for e in self.settlement.events.LeaseClosed().process_receipt(receipt, errors=DISCARD)]
        return {"leases": lease_ids, "claimed": paid, "closed": closed, "skipped": self._skipped(receipt),
                "tx": tx_hash_of(receipt)}

    def close(self, lease_id: str) -> dict[str, Any]:
        receipt = self.transact(self.settlement.functions.close(bytes.fromhex(lease_id[2:])), "close lease")
        paid = self._paid_out(receipt)
        closed = self.settlement.events.LeaseClosed().process_receipt(receipt, errors=DISCARD)[0]["args"]
        return {"lease": lease_id, "paid_to_provider": paid, "refunded": closed["refund"],
                "collateral_unlocked": closed["collateral"], "tx": tx_hash_of(receipt)}

    def report(self, lease_id: str) -> dict[str, Any]:
        receipt = self.transact(self.settlement.functions.reportFault(bytes.fromhex(lease_id[2:])), "report fault")
        event = self.settlement.events.FaultReported().process_receipt(receipt, errors=DISCARD)[0]["args"]
        refund = self.settlement.events.LeaseClosed().process_receipt(receipt, errors=DISCARD)[0]["args"]["refund"]
        return {"lease": lease_id, "slashed": event["slashed"], "to_buyer": event["toBuyer"],
                "to_reporter": event["toReporter"], "burned": event["burned"], "buyer_refund": refund,
                "tx": tx_hash_of(receipt)}

    # ----- matcher accountability -----

    def has_function(self, name: str) -> bool:
        return any(e.get("type") == "function" and e.get("name") == name for e in self.settlement.abi)

    def _court(self):
        if self.court is None:
            raise UnderbidError("this address book lists no MatcherCourt: challenges go to the court"
                                " (`settlement.court()`); redeploy or update the address book")
        return self.court

    def lease_id_of(self, matcher: str, round_id: int, order_digest: str, bid_digest: str) -> str:
        """The lease id of (matcher, round, order, bid): keccak256(abi.encode(...)), as `leaseIdOf`."""
        from eth_abi import encode

        data = encode(["address", "uint64", "bytes32", "bytes32"],
                      [Web3.to_checksum_address(matcher), round_id, bytes.fromhex(order_digest[2:]),
                       bytes.fromhex(bid_digest[2:])])
        return "0x" + Web3.keccak(data).hex().removeprefix("0x")

    @staticmethod
    def challenge_args(receipt: dict[str, Any], bid: Bid, bid_sig: bytes, witness_round: int, witness_order: str,
                       witness_bid: Bid, own_order: str | None = None,
                       fill_lease: tuple[int, str] | None = None) -> tuple:
        """The arguments of the court's `challenge` / `verifyChallenge`; `own_order` (the order of the
        bid's own shorter lease in the witness round) selects the swap proof, None the spare-unit proof.
        `fill_lease` (round, order digest) is a lease of the bid itself: the court needs one when the bid
        was used up by its first fill (it then has no fill record; the lease names the round)."""
        r = (Web3.to_checksum_address(receipt["matcher"]), bytes.fromhex(receipt["bidHash"][2:]),
             int(receipt["round"]), int(receipt["issuedAt"]))
        own = bytes.fromhex(own_order[2:]) if own_order else bytes(32)
        fill = (int(fill_lease[0]), bytes.fromhex(fill_lease[1][2:])) if fill_lease else (0, bytes(32))
        return (r, bytes.fromhex(receipt["signature"][2:]), bid.as_call_tuple(), bid_sig,
                (int(witness_round), bytes.fromhex(witness_order[2:]), witness_bid.as_call_tuple()), own, fill)

    def verify_challenge(self, args: tuple) -> str:
        """Runs every check of the court's `challenge` as a call; returns the matcher who would be slashed."""
        matcher, _ = self.call(self._court().functions.verifyChallenge(*args))
        return matcher

    def challenge(self, args: tuple) -> dict[str, Any]:
        """Sends the challenge to the MatcherCourt; returns its `MatcherSlashed` figures."""
        court = self._court()
        receipt = self.transact(court.functions.challenge(*args), "challenge the round")
        events = court.events.MatcherSlashed().process_receipt(receipt, errors=DISCARD)
        data = dict(events[0]["args"]) if events else {}
        return {**{k: ("0x" + v.hex() if isinstance(v, bytes) else v) for k, v in data.items()},
                "tx": tx_hash_of(receipt)}

    # ----- matcher bonds -----

    def matcher_bond(self, who: str) -> dict[str, Any]:
        """`who`'s matcher bond and the rules around it: the minimum, whether it may settle, its exit.

        Keys: address, bond, min_bond, meets_minimum, bonded (may settle now), exiting, exit_at (0 while
        active), exit_left (seconds until the bond can be withdrawn), withdrawable, challenge_window,
        exit_delay, chain_time.
        """
        who = Web3.to_checksum_address(who)
        s = self.settlement.functions
        bond, exit_at, slashable_until, receipt_signer = s.matchers(who).call()
        minimum = s.minMatcherBond().call()
        params = self.params()
        now = self.block_time()
        # The bond leaves once the exit delay and the challenge window of its last lease are both over.
        leaves_at = max(exit_at, slashable_until) if exit_at else 0
        return {
            "address": who,
            "bond": bond,
            "min_bond": minimum,
            "meets_minimum": bond >= minimum and bond != 0,
            "bonded": s.isBondedMatcher(who).call(),
            "receipt_signer": None if int(receipt_signer, 16) == 0 else receipt_signer,
            "slashable_until": slashable_until,
            "exiting": exit_at != 0,
            "exit_at": exit_at,
            "withdrawable_at": leaves_at,
            "exit_left": max(leaves_at - now, 0) if exit_at else 0,
            "withdrawable": exit_at != 0 and now >= leaves_at,
            "challenge_window": params["challengeWindow"],
            "exit_delay": params["matcherExitDelay"],
            "chain_time": now,
        }

    def bond_matcher(self, amount: int, receipt_signer: str | None = None) -> dict[str, Any]:
        """Adds `amount` UBT to this account's matcher bond (approving the settlement contract first).

        `receipt_signer` is the key whose signatures are this matcher's receipts: by default the one
        already fixed by an earlier bond, else this account itself.
        """
        _, exit_at, _, fixed = self.settlement.functions.matchers(self.address).call()
        fixed = None if int(fixed, 16) == 0 else fixed
        signer = Web3.to_checksum_address(receipt_signer) if receipt_signer else (fixed or self.address)
        if fixed and signer != fixed:
            raise UnderbidError(f"ReceiptSignerFixed(signer={fixed}): this matcher's receipt signer is fixed while"
                                " it is bonded")
        if exit_at:
            raise UnderbidError(
                f"MatcherExiting(matcher={self.address}): this matcher asked to leave, so it cannot add to its bond:"
                " withdraw it after the exit delay (`underbid matcher withdraw`), then bond again"
            )
        balance = self.ubt_balance(self.address)
        if balance < amount:
            raise UnderbidError(
                f"ERC20InsufficientBalance(account={self.address}, balance={format_ubt(balance)} UBT,"
                f" needed={format_ubt(amount)} UBT): get more UBT first"
            )
        self._ensure_allowance(self.ubt, self.book.address("UnderbidSettlement"), amount, "UBT for the matcher bond")
        receipt = self.transact(self.settlement.functions.bondMatcher(amount, signer), "bond UBT as a matcher")
        event = self.settlement.events.MatcherBonded().process_receipt(receipt, errors=DISCARD)[0]["args"]
        return {"bonded": event["amount"], "bond": event["bond"], "receipt_signer": event["receiptSigner"],
                "tx": tx_hash_of(receipt)}

    def request_matcher_exit(self) -> dict[str, Any]:
        """Stops this matcher settling and starts its exit delay."""
        receipt = self.transact(self.settlement.functions.requestMatcherExit(), "request matcher exit")
        event = self.settlement.events.MatcherExitRequested().process_receipt(receipt, errors=DISCARD)[0]["args"]
        return {"exit_at": event["exitAt"], "tx": tx_hash_of(receipt)}

    def withdraw_matcher_bond(self) -> dict[str, Any]:
        """Sends this matcher's remaining bond back once its exit delay is over."""
        receipt = self.transact(self.settlement.functions.withdrawMatcherBond(), "withdraw the matcher bond")
        event = self.settlement.events.MatcherBondWithdrawn().process_receipt(receipt, errors=DISCARD)[0]["args"]
        return {"withdrawn": event["amount"], "tx": tx_hash_of(receipt)}

    # ----- signed messages -----

    def cancel_nonce(self, nonce: int) -> dict[str, Any]:
        """Cancels `nonce` in two steps: the first call announces it (`requestCancel`: the matcher drops
        the message at once); a call after the notice period voids it (`cancelNonces`).

        Returns {nonce, step: "requested" | "cancelled", ready_at, tx}. Raises UnderbidError for a
        void nonce, or while the notice is not over.
        """
        s = self.settlement.functions
        claimed, voided = s.nonceState(self.address, nonce).call()
        requested_at = int(s.cancelRequestedAt(self.address, nonce).call())
        if voided:
            raise UnderbidError(f"nonce {nonce} is already {'cancelled' if requested_at else 'used (filled)'}")
        notice = self.notice_period
        if requested_at == 0:
            receipt = self.transact(s.requestCancel([nonce]), "request the cancellation")
            at = int(self.w3.eth.get_block(receipt["blockNumber"])["timestamp"])
            return {"nonce": nonce, "step": "requested", "cancelled": False, "claimed": claimed,
                    "ready_at": at + notice, "tx": tx_hash_of(receipt)}
        ready_at = requested_at + notice
        left = ready_at - self.block_time()
        if left > 0:
            raise UnderbidError(
                f"NoticeNotOver(readyAt={_when(ready_at)}): the cancellation of nonce {nonce} is requested"
                f" (the matcher no longer fills it); the notice is not over (ready in {left} s)"
            )
        receipt = self.transact(s.cancelNonces([nonce]), "cancel nonce")
        return {"nonce": nonce, "step": "cancelled", "cancelled": True, "claimed": claimed, "ready_at": ready_at,
                "tx": tx_hash_of(receipt)}

    def nonce_state(self, signer: str, nonce: int) -> str:
        """free, claimed (a message with it filled in part), cancelling (cancel requested),
        cancelled (voided after a request) or used (voided by a complete fill)."""
        s = self.settlement.functions
        claimed, voided = s.nonceState(signer, nonce).call()
        requested = s.cancelRequestedAt(signer, nonce).call() != 0
        if voided:
            return "cancelled" if requested else "used"
        if requested:
            return "cancelling"
        return "claimed" if claimed else "free"

    def nonce_is_fresh(self, signer: str, nonce: int) -> bool:
        """True if no message claimed `nonce`, it is not void and no cancellation was requested."""
        s = self.settlement.functions
        claimed, voided = s.nonceState(signer, nonce).call()
        return not claimed and not voided and s.cancelRequestedAt(signer, nonce).call() == 0

    def next_nonce(self, journal: Journal, key: str) -> int:
        """A fresh nonce: after this signer's last journalled one (sharing its bitmap word), else random."""
        used = [e.nonce for e in journal.entries(key, signer=self.address)]
        nonce = max(used) + 1 if used else secrets.randbits(40) << 7
        while not self.nonce_is_fresh(self.address, nonce):
            nonce += 1
        return nonce

    def sign(self, message: Order | Bid) -> bytes:
        if self.account is None:
            raise UnderbidError("signing needs an account: pass --account")
        return message.sign(self.account.key, self.domain)


# ----- the matcher's HTTP API -----


class MatcherClient:
    def __init__(self, url: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _request(self, method: str, path: str, what: str, *, missing_ok: bool = False, **kwargs) -> Any:
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = httpx.request(method, self.url + path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise MatcherError(
                f"the matcher at {self.url} is unreachable: on a devnet `underbid devnet up` (re)starts it;"
                " elsewhere pass --matcher"
            ) from None
        except httpx.HTTPError as exc:
            raise MatcherError(f"the matcher at {self.url} did not answer ({type(exc).__name__}): try again") from None
        if missing_ok and response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise MatcherError(f"the matcher refused {what}: {_api_reason(response)}")
        try:
            return response.json()
        except ValueError:
            raise MatcherError(f"the matcher at {self.url} sent a non-JSON answer to {what}") from None

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health", "the health check")

    def post_order(self, order: Order, signature: bytes, spec: str | None = None) -> dict[str, Any]:
        body = {**order.model_dump(by_alias=True), "signature": "0x" + signature.hex(), "spec": spec}
        return self._request("POST", "/orders", "the order", json=body)

    def post_bid(self, bid: Bid, signature: bytes, spec: str | None = None) -> dict[str, Any]:
        body = {**bid.model_dump(by_alias=True), "signature": "0x" + signature.hex(), "spec": spec}
        return self._request("POST", "/bids", "the bid", json=body)

    def post_bids(self, signed: list[tuple[Bid, bytes]], spec: str | None = None) -> list[dict[str, Any]]:
        """Posts bids in one request, accepted whole or not at all; one acknowledgement each."""
        body = {"bids": [{**bid.model_dump(by_alias=True), "signature": "0x" + sig.hex(), "spec": spec}
                         for bid, sig in signed]}
        return self._request("POST", "/bids/batch", f"the {len(signed)} bids", json=body)["accepted"]

    def get_message(self, kind: str, digest: str) -> dict[str, Any] | None:
        return self._request("GET", f"/{kind}s/{digest}", f"the {kind} lookup", missing_ok=True)

    def markets(self) -> list[dict[str, Any]]:
        return self._request("GET", "/markets", "the market list")

    def recheck(self, kind: str, digest: str) -> dict[str, Any] | None:
        """Asks the matcher to re-read the message's nonce now (it drops a message whose
        cancellation was requested); the message as stored after, or None if it has none."""
        return self._request("POST", f"/{kind}s/{digest}/recheck", f"the {kind} recheck", missing_ok=True)

    def round(self, round_id: int) -> dict[str, Any]:
        return self._request("GET", f"/rounds/{round_id}", f"round {round_id}")

    def close_round(self, token: str, timeout: float = 600.0) -> dict[str, Any]:
        """Asks the matcher to close its round (it answers 202 and closes in the background) and
        polls the round until the close ends; returns its report."""
        auth = {"Authorization": f"Bearer {token}"}
        asked = self._request("POST", "/rounds/close", "closing the round", headers=auth)
        deadline = time.monotonic() + timeout
        while True:
            close = self._request("GET", asked["poll"], f"round {asked['round_id']}").get("close") or {}
            if close.get("status") == "done":
                return close["report"]
            if close.get("status") not in (None, "running"):
                raise MatcherError(f"closing round {asked['round_id']} {close.get('status')}: {close.get('error')}")
            if time.monotonic() > deadline:
                raise MatcherError(f"round {asked['round_id']} did not finish closing within {timeout:.0f}s")
            time.sleep(0.2)


def _api_reason(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(detail, list) and detail:
        return "; ".join(
            f"{d.get('field', '?')}: {d.get('reason', d.get('msg', '?'))}" for d in detail if isinstance(d, dict)
        )
    return _one_line(detail) if detail else f"HTTP {response.status_code}"


# ----- the journal of signed messages -----


@dataclass
class JournalEntry:
    kind: str  # "order" or "bid"
    deployment: str
    digest: str
    signer: str
    nonce: int
    message: dict[str, Any]
    signature: str
    spec: str | None
    matcher: str
    created_at: float = field(default_factory=time.time)
    #: the matcher's signed receipt for a bid ({matcher, bidHash, round, issuedAt, signature}), when it gave one
    receipt: dict[str, Any] | None = None

    def model(self) -> Order | Bid:
        return (Order if self.kind == "order" else Bid).model_validate(self.message)


class Journal:
    """The orders and bids signed on this machine (JSON lines), so `order list` / `bid list` can find
    them again. The matcher and the chain stay the source of truth for their state."""

    def __init__(self, path: Path):
        self.path = path

    def add(self, entry: JournalEntry) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as out:
            out.write(json.dumps(asdict(entry)) + "\n")

    def entries(self, deployment: str, *, signer: str | None = None, kind: str | None = None) -> list[JournalEntry]:
        if not self.path.exists():
            return []
        found = []
        for line in self.path.read_text().splitlines():
            try:
                entry = JournalEntry(**json.loads(line))
            except (ValueError, TypeError):
                continue
            if entry.deployment != deployment:
                continue
            if signer and entry.signer.lower() != signer.lower():
                continue
            if kind and entry.kind != kind:
                continue
            found.append(entry)
        return found


__all__ = [
    "ChainError", "Client", "Journal", "JournalEntry", "LeaseView", "MatcherClient",
    "MatcherError", "ProviderInfo", "SKIP_REASONS", "UnderbidError", "describe_error",
]
