"""What every `underbid` command shares: error handling, the common options, parameter types, output."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, overload

import click
from rich.console import Console
from rich.table import Table

from underbid.cli._amounts import with_amounts
from underbid.devnet.node import DEV_MATCHER_URL, DEV_RPC, DevnetError, DevnetState
from underbid.protocol.units import (
    CREDIT_DECIMALS,
    UBT_DECIMALS,
    AmountError,
    DurationError,
    Unit,
    format_credits,
    format_ubt,
    parse_amount,
    parse_duration,
)

DEFAULT_DEPLOYMENT = Path("deployments/local.json")


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


class ErrorCode(StrEnum):
    """The kind of a failed command, the `code` of its `--json` error object."""

    USAGE = "usage"  # a bad option or argument (exit 2)
    REVERT = "revert"  # the chain refused with a custom error (`revert` names it)
    CHAIN = "chain"
    MATCHER = "matcher"
    WALLET = "wallet"
    AMOUNT = "amount"
    MARKET = "market"
    SDL = "sdl"
    CONFIG = "config"  # a provider agent configuration that cannot run
    DEVNET = "devnet"
    NETWORK = "network"  # an unknown network name, or no address book for the node's chain
    ABORTED = "aborted"
    INTERRUPTED = "interrupted"
    UNEXPECTED = "unexpected"


def print_error(message: str, code: ErrorCode = ErrorCode.UNEXPECTED, *, as_json: bool = False,
                exit_code: int = 1, revert: str | None = None) -> None:
    """One `error: ...` line on stderr; with --json, one JSON object on stdout instead.

    With --json a script reads stdout alone: the result on success, else
    `{"error": {"code", "message", "exit_code"[, "revert"]}}`.
    """
    if not as_json:
        click.echo(f"error: {_one_line(message)}", err=True)
        return
    error: dict[str, Any] = {"code": code.value, "message": _one_line(message), "exit_code": exit_code}
    if revert is not None:
        error["revert"] = revert
    click.echo(json.dumps({"error": error}, indent=2))


def _error_code(exc: BaseException) -> tuple[ErrorCode, str | None]:
    """The JSON error code of a runtime error, and the custom error's name for a revert."""
    from underbid.agent.config import ConfigError
    from underbid.chain.networks import NetworkError
    from underbid.client.session import ChainError, MatcherError
    from underbid.client.wallet import WalletError
    from underbid.protocol.markets import MarketSpecError
    from underbid.protocol.sdl import SdlError

    if isinstance(exc, ChainError):
        decoded = getattr(exc, "decoded", None)
        return (ErrorCode.REVERT, decoded.name) if decoded is not None else (ErrorCode.CHAIN, None)
    codes: tuple[tuple[type[BaseException], ErrorCode], ...] = (
        (MatcherError, ErrorCode.MATCHER), (WalletError, ErrorCode.WALLET), (AmountError, ErrorCode.AMOUNT),
        (MarketSpecError, ErrorCode.MARKET), (SdlError, ErrorCode.SDL), (DevnetError, ErrorCode.DEVNET),
        (ConfigError, ErrorCode.CONFIG), (NetworkError, ErrorCode.NETWORK),
    )
    for kind, code in codes:
        if isinstance(exc, kind):
            return code, None
    return ErrorCode.CHAIN, None  # any other UnderbidError comes from the chain side of the client


def _runtime_errors() -> tuple[type[BaseException], ...]:
    from underbid.agent.config import ConfigError
    from underbid.chain.networks import NetworkError
    from underbid.client.session import UnderbidError
    from underbid.client.wallet import WalletError
    from underbid.protocol.markets import MarketSpecError
    from underbid.protocol.sdl import SdlError

    return UnderbidError, WalletError, SdlError, DevnetError, AmountError, MarketSpecError, ConfigError, NetworkError


def make_console(stderr: bool = False) -> Console:
    """Rich output; when not on a terminal (pipes, logs, tests), wide enough for 0x addresses."""
    stream = sys.stderr if stderr else sys.stdout
    wide = None if stream.isatty() else int(os.environ.get("COLUMNS") or 140)
    return Console(highlight=False, width=wide, stderr=stderr)


class UnderbidGroup(click.Group):
    """The root group: every error ends as one `error: ...` line on stderr, never a traceback.

    Exit codes: 0 success, 1 runtime error (chain, matcher, wallet), 2 usage error (bad option).
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: D401
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        as_json = "--json" in (sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            message = exc.format_message()
            hint = ""
            if exc.ctx is not None and not isinstance(exc, click.BadParameter):
                hint = f" (see `{exc.ctx.command_path} --help`)"
            print_error(message[:1].lower() + message[1:] + hint, ErrorCode.USAGE, as_json=as_json, exit_code=2)
            sys.exit(2)
        except click.ClickException as exc:
            print_error(exc.format_message(), ErrorCode.USAGE, as_json=as_json, exit_code=exc.exit_code)
            sys.exit(exc.exit_code)
        except click.Abort:
            print_error("aborted", ErrorCode.ABORTED, as_json=as_json)
            sys.exit(1)
        except KeyboardInterrupt:
            print_error("interrupted", ErrorCode.INTERRUPTED, as_json=as_json, exit_code=130)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - the one place that turns anything left into one line
            if isinstance(exc, _runtime_errors()):
                code, revert = _error_code(exc)
                print_error(str(exc), code, as_json=as_json, revert=revert)
                sys.exit(1)
            if os.environ.get("UNDERBID_DEBUG"):
                raise
            print_error(f"unexpected {type(exc).__name__}: {exc} (set UNDERBID_DEBUG=1 for the traceback)",
                        ErrorCode.UNEXPECTED, as_json=as_json)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


# ----- parameter types -----


class AmountType(click.ParamType):
    """A human amount in a token's units (`1.25`), parsed as Decimal into base units."""

    def __init__(self, decimals: int, unit: str, *, allow_zero: bool = False):
        self.decimals, self.unit, self.allow_zero = decimals, unit, allow_zero
        self.name = unit

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_amount(value, self.decimals, allow_zero=self.allow_zero, what=f"{self.unit} amount")
        except AmountError as exc:
            self.fail(str(exc), param, ctx)


CREDITS = AmountType(CREDIT_DECIMALS, "UBC")
UBT = AmountType(UBT_DECIMALS, "UBT")
PRICE = AmountType(CREDIT_DECIMALS, "UBC/unit-hour")



class DurationType(click.ParamType):
    """A duration: `90s`, `30m`, `2h`, `1.5d`; a bare number is in `default_unit`."""

    name = "duration"

    def __init__(self, default_unit: str = "h", *, maximum: int = 2**32 - 1):
        self.default_unit, self.maximum = default_unit, maximum

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_duration(value, self.default_unit, maximum=self.maximum)
        except DurationError as exc:
            self.fail(str(exc), param, ctx)


class MarketSpecType(click.ParamType):
    """A market spec string (`gpu=nvidia-h100;vram=80;gpus=8;region=us-east`), normalized."""

    name = "spec"

    def convert(self, value, param, ctx):
        from underbid.protocol.catalogue import checked_spec
        from underbid.protocol.markets import MarketSpecError

        try:
            return checked_spec(value)
        except MarketSpecError as exc:
            self.fail(f"unknown market {value!r}: {exc}", param, ctx)


# ----- the common options and the per-command environment -----


def _devnet_defaults() -> DevnetState | None:
    state = DevnetState.load()
    return state if state and state.alive().get("anvil") else None


@dataclass
class Env:
    """What a command runs against, from --account/--rpc/--matcher/--deployment/--json."""

    account_name: str | None
    rpc_option: str | None
    matcher_option: str | None
    deployment_option: Path | None
    json: bool
    password_file: Path | None
    network_option: str | None = None
    console: Console = field(default_factory=lambda: make_console())
    _client: Any = None
    _devnet: Any = False
    _matcher_address: str | None = None
    _deployment: Path | None = None

    # defaults: an explicit option, then $UNDERBID_*, then --network's address book, then the
    # running devnet, then the devnet's fixed ports

    @property
    def devnet(self) -> DevnetState | None:
        if self._devnet is False:
            # With --network the command runs against that network's book and RPC, never the devnet's.
            self._devnet = None if self.network_option else _devnet_defaults()
        return self._devnet

    def _network_book(self) -> Path | None:
        """The address book --network names (None without --network). Raises NetworkError."""
        if not self.network_option:
            return None
        from underbid.chain.networks import book_path

        if self.deployment_option:
            raise click.UsageError("--network and --deployment (or $UNDERBID_DEPLOYMENT) both name an address"
                                   " book: pass one of them")
        return book_path(self.network_option)

    @property
    def rpc(self) -> str:
        if self.rpc_option:
            return self.rpc_option
        book = self._network_book()
        if book is not None:
            from underbid.chain.deployment import AddressBook
            from underbid.chain.networks import NetworkError

            recorded = AddressBook.load(book).rpc
            if not recorded:
                raise NetworkError(f"the address book {book} records no RPC URL: pass --rpc (or set $UNDERBID_RPC)")
            return recorded
        return self.devnet.rpc if self.devnet else DEV_RPC

    @property
    def matcher_url(self) -> str:
        return self.matcher_option or (self.devnet.matcher_url if self.devnet else DEV_MATCHER_URL)

    @property
    def deployment(self) -> Path:
        if self._deployment is None:
            self._deployment = self._find_deployment()
        return self._deployment

    def _find_deployment(self) -> Path:
        if self.deployment_option:
            return self.deployment_option
        book = self._network_book()
        if book is not None:
            return book
        if self.devnet and (self.rpc_option is None or self.rpc_option == self.devnet.rpc):
            return Path(self.devnet.deployment)
        if self.rpc_option:
            # A node named by its URL alone: the address book deployed to its chain.
            from underbid.chain.networks import book_for_chain, chain_id_at

            return book_for_chain(chain_id_at(self.rpc_option), self.rpc_option)
        from underbid.devnet.node import project_root

        root = project_root()
        return root / DEFAULT_DEPLOYMENT if root and not DEFAULT_DEPLOYMENT.exists() else DEFAULT_DEPLOYMENT

    def account_entry(self):
        from underbid.client.wallet import find_account

        if not self.account_name:
            raise click.UsageError("this command needs an account: pass --account <name> (or set $UNDERBID_ACCOUNT)")
        return find_account(self.account_name)

    def password(self, alias: str) -> str:
        from underbid.client.wallet import PASSWORD_ENV, read_password_file

        if self.password_file:
            return read_password_file(self.password_file)
        # ape's own variable for one ape account (`ape run` reads it too), before the general one.
        ape_passphrase = os.environ.get(f"APE_ACCOUNTS_{alias}_PASSPHRASE")
        if ape_passphrase is not None and self.account_entry().source == "ape":
            return ape_passphrase
        if os.environ.get(PASSWORD_ENV) is not None:
            return os.environ[PASSWORD_ENV]
        from underbid.client.wallet import WalletError

        try:
            # default="": an empty answer (or end of input) ends the prompt instead of asking forever
            typed = click.prompt(f"password for {alias}", hide_input=True, err=True, default="", show_default=False)
        except click.Abort:
            typed = ""
        if not typed:
            raise WalletError(f"account {alias!r} needs its password: type it at the prompt, pass --password-file,"
                              f" or set ${PASSWORD_ENV}")
        return typed

    def client(self, *, account: bool = True):
        """The chain client; with `account`, the account is found and unlocked first (before any RPC)."""
        from underbid.client.session import Client
        from underbid.client.wallet import unlock
        from underbid.devnet.node import is_dev_address, require_devnet

        if self._client is not None and (not account or self._client.account is not None):
            return self._client
        entry = self.account_entry() if account else None
        client = self._client or Client(self.rpc, self.deployment)
        if entry is not None:
            if entry.is_dev or is_dev_address(entry.address):  # also a dev key under env:<VAR> or a keystore alias
                require_devnet(client, f"the public dev key {entry.alias}")
            signer = unlock(entry, self.password(entry.alias) if entry.needs_password else None)
            client = client.with_account(signer)
        self._client = client
        return client

    def matcher(self):
        from underbid.client.session import MatcherClient

        return MatcherClient(self.matcher_url)

    @overload
    def matcher_address(self, *, required: Literal[True] = ...) -> str: ...
    @overload
    def matcher_address(self, *, required: bool) -> str | None: ...
    def matcher_address(self, *, required: bool = True) -> str | None:
        """The address of the matcher this command trades through, which signed orders and bids name.

        Asked from the matcher at --matcher (`GET /health`, field `matcher`) and checked against the
        deployment. If that matcher cannot be reached: the only bonded matcher on chain, if there is
        exactly one. Raises UnderbidError when neither works and `required`, else returns None.
        """
        from underbid.client.session import MatcherError, UnderbidError

        if self._matcher_address is not None:
            return self._matcher_address
        client = self.client(account=False)
        try:
            health = self.matcher().health()
        except MatcherError as exc:
            bonded = client.bonded_matchers()
            if len(bonded) == 1:
                self._matcher_address = bonded[0]
                return bonded[0]
            if not required:
                return None
            raise UnderbidError(f"{exc} (needed for the matcher's address)") from None
        settlement = health.get("settlement")
        if settlement and settlement.lower() != client.book.address("UnderbidSettlement").lower():
            raise UnderbidError(
                f"the matcher at {self.matcher_url} serves another deployment (settlement {settlement}):"
                " pass the matcher of this one with --matcher"
            )
        address = health.get("matcher")
        if not address:
            raise UnderbidError(f"the matcher at {self.matcher_url} does not report its address (GET /health)")
        from eth_utils import to_checksum_address

        self._matcher_address = to_checksum_address(address)
        return self._matcher_address

    def journal(self):
        from underbid.client.session import Journal
        from underbid.client.wallet import underbid_home

        return Journal(underbid_home() / "messages.jsonl")

    # ----- output -----

    def emit(self, data: Any, render: Callable[[Console], None] | None = None,
             amounts: Mapping[str, Unit] | None = None) -> None:
        """JSON on stdout with --json, else the human rendering (a rich table or lines).

        In JSON every amount is `{"value": "<exact decimal>", "unit": ...}` (`cli._amounts`);
        `amounts` names the fields whose key means another unit in this command's output.
        """
        if self.json:
            click.echo(json.dumps(with_amounts(data, amounts), indent=2, default=_json_default))
        elif render is not None:
            render(self.console)

    @contextmanager
    def progress(self, message: str) -> Iterator[Callable[[str], None]]:
        """A spinner on stderr while something slow runs; the yielded function updates its text."""
        if self.json:
            yield lambda _: None
            return
        err = Console(stderr=True)
        with err.status(message) as status:
            def update(text: str) -> None:
                status.update(f"{message}: {text}")

            if self._client is not None:
                self._client.on_tx = update
            try:
                yield update
            finally:
                if self._client is not None:
                    self._client.on_tx = None


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, (Decimal, Path)):
        return str(value)
    if hasattr(value, "hex") and callable(value.hex):
        # HexBytes (tx hashes) print without 0x since hexbytes 1.0; scripts expect the prefix.
        text = value.hex()
        return text if text.startswith("0x") else "0x" + text
    raise TypeError(f"cannot serialize {type(value).__name__}")


network_option = click.option(
    "--network", envvar="UNDERBID_NETWORK", default=None, metavar="NAME",
    help="Run against a deployed network: its address book deployments/NAME.json (`base-sepolia`, or ape's"
         " `base:sepolia`) and the RPC URL it records (--rpc overrides). [$UNDERBID_NETWORK]",
)


def common_options(f: Callable) -> Callable:
    """Adds --account, --password-file, --rpc, --matcher, --deployment, --network and --json; passes `env`."""

    @click.option("--account", "-a", "account_name", envvar="UNDERBID_ACCOUNT", default=None, metavar="NAME",
                  help="Keystore account (alias or address; `env:<VAR>` for a key in $VAR; `dev:<n>` for devnet"
                       " test keys). [$UNDERBID_ACCOUNT]")
    @click.option("--password-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
                  help="Read the account password from this file (else $UNDERBID_PASSWORD, else a prompt).")
    @click.option("--rpc", envvar="UNDERBID_RPC", default=None, metavar="URL",
                  help=f"Ethereum JSON-RPC URL. [$UNDERBID_RPC; default: the running devnet, else {DEV_RPC}]")
    @click.option("--matcher", "matcher_option", envvar="UNDERBID_MATCHER", default=None, metavar="URL",
                  help=f"Matcher API URL. [$UNDERBID_MATCHER; default: the devnet's, else {DEV_MATCHER_URL}]")
    @click.option("--deployment", type=click.Path(path_type=Path, dir_okay=False), envvar="UNDERBID_DEPLOYMENT",
                  default=None, help=f"Address book. [$UNDERBID_DEPLOYMENT; default: {DEFAULT_DEPLOYMENT}]")
    @network_option
    @click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
    @functools.wraps(f)
    def wrapper(account_name, password_file, rpc, matcher_option, deployment, network, as_json, **kwargs):
        env = Env(account_name, rpc, matcher_option, deployment, as_json, password_file, network)
        return f(env, **kwargs)

    return wrapper


# ----- formatting -----


def ubc(amount: int) -> str:
    return format_credits(amount)


def ubt(amount: int) -> str:
    return format_ubt(amount)


def ubt_short(amount: int, places: int = 4) -> str:
    value = Decimal(amount).scaleb(-UBT_DECIMALS)
    text = f"{value:,.{places}f}".rstrip("0").rstrip(".")
    return text


def short(hex_id: str, n: int = 10) -> str:
    return hex_id[: n + 2] + "…" if len(hex_id) > n + 2 else hex_id


def hours(seconds: int) -> str:
    h = Decimal(seconds) / 3600
    return f"{h.normalize():f}h" if h == h.to_integral_value() or seconds % 36 == 0 else f"{seconds}s"


def ago(seconds: int) -> str:
    seconds = int(seconds)
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds >= 86400:
        return f"{sign}{seconds // 86400}d{(seconds % 86400) // 3600}h"
    if seconds >= 3600:
        return f"{sign}{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    if seconds >= 60:
        return f"{sign}{seconds // 60}m{seconds % 60:02d}s"
    return f"{sign}{seconds}s"


def when(timestamp: int, now: int) -> str:
    """`12-05 14:20 (in 3h20m)`: an absolute UTC time and how far it is from the chain's `now`.

    Relative to the chain's clock, not the wall clock: a devnet's clock may have been advanced.
    """
    stamp = time.strftime("%m-%d %H:%M", time.gmtime(timestamp))
    return f"{stamp} (in {ago(timestamp - now)})" if timestamp > now else f"{stamp} ({ago(now - timestamp)} ago)"


def kv_table(title: str | None, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, str(value))
    return table
