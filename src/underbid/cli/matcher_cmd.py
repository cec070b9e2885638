"""`underbid matcher run | close-round | round | bond | unbond | withdraw | status`."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
from eth_account.signers.local import LocalAccount

from underbid.cli._amounts import STAKE
from underbid.cli._common import (
    DEFAULT_DEPLOYMENT,
    UBT,
    Env,
    ago,
    common_options,
    kv_table,
    network_option,
    ubt_short,
)
from underbid.devnet.node import DEV_RPC, MATCHER, dev_account
from underbid.protocol.units import Unit


class DatabaseType(click.ParamType):
    """A store location: a file path (SQLite) or a postgresql:// URL; any other URL is refused."""

    name = "PATH|URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from underbid.matcher.store import StoreError, database_kind  # the store's imports only when run

        try:
            database_kind(str(value))
        except StoreError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


@click.group()
def matcher() -> None:
    """Run the off-chain matcher, close a round on one, or manage a matcher's UBT bond."""


def _matcher_account(env: Env, key_env: str, dev: bool) -> LocalAccount:
    """The matcher's key: a keystore (--account), else the environment secret $KEY_ENV, else with
    --dev the devnet's public matcher key (the caller checks the chain is a devnet)."""
    if env.account_name:
        from underbid.client.wallet import unlock

        entry = env.account_entry()
        if entry.is_dev and not dev:
            raise click.UsageError(f"{entry.alias} is a public dev key: pass --dev as well (a local devnet only)")
        return unlock(entry, env.password(entry.alias) if entry.needs_password else None)
    key = os.environ.get(key_env)
    if key:
        from eth_account import Account

        try:
            return Account.from_key(key)
        except ValueError as exc:
            raise click.BadParameter(f"${key_env} is not a private key: {exc}", param_hint="--key-env") from None
    if dev:
        return dev_account(MATCHER)
    raise click.UsageError(f"say which key the matcher signs with: --account <keystore alias>, ${key_env} holding"
                           " its private key, or --dev on a local devnet")


@matcher.command("run")
@click.option("--rpc", envvar="UNDERBID_RPC", default=None, metavar="URL",
              help=f"Ethereum JSON-RPC URL. [$UNDERBID_RPC; default: --network's, the devnet's, else {DEV_RPC}]")
@click.option("--deployment", type=click.Path(path_type=Path), envvar="UNDERBID_DEPLOYMENT", default=None,
              help=f"Address book written by `ape run deploy`. [default: --network's, the node's chain's, else"
                   f" {DEFAULT_DEPLOYMENT}]")
@network_option
@click.option("--db", type=DatabaseType(), default=".underbid/matcher.db", show_default=True,
              help="The store: a SQLite file's path (one process), or a postgresql://user:password@host:port/dbname"
                   " URL (a Postgres database several processes of one matcher can share: each takes messages,"
                   " and one, elected by a Postgres advisory lock, closes rounds and submits).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8700, show_default=True, type=click.IntRange(1, 65535))
@click.option("--round-seconds", default=10.0, show_default=True, type=click.FloatRange(min=0),
              help="Close a round this often; 0 closes rounds only on POST /rounds/close.")
@click.option("--admin-token", envvar="UNDERBID_ADMIN_TOKEN", default=None,
              help="Bearer token for POST /rounds/close (or $UNDERBID_ADMIN_TOKEN).")
@click.option("--account", "-a", "account_name", default=None, metavar="NAME",
              help="Sign with this keystore account (underbid's or ape's; password from --password-file,"
                   " $APE_ACCOUNTS_<alias>_PASSPHRASE or $UNDERBID_PASSWORD), or `env:<VAR>`.")
@click.option("--password-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Read the keystore password from this file.")
@click.option("--key-env", default="UNDERBID_MATCHER_KEY", show_default=True,
              help="Environment variable holding the matcher's private key (without --account).")
@click.option("--dev", is_flag=True, help="Use the devnet's well-known matcher key when no key is set (a local"
                                          " devnet only).")
def matcher_run(rpc, deployment, network, db, host, port, round_seconds, admin_token, account_name, password_file,
                key_env, dev) -> None:
    """Start the matcher: reconcile unfinished rounds, serve the API, close rounds on a timer."""
    from underbid.devnet.node import is_dev_address
    from underbid.matcher import netsimplex
    from underbid.matcher.service import build_matcher, serve
    from underbid.matcher.store import StoreError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    env = Env(account_name, rpc, None, deployment, False, password_file, network)
    account = _matcher_account(env, key_env, dev)
    # A public dev key is refused off a devnet however it came (--dev, dev:<n>, env:<VAR>, a keystore, $KEY_ENV).
    devnet_only = ("--dev (the devnet's public matcher key)" if dev
                   else f"the public dev key {account.address}" if is_dev_address(account.address) else None)
    try:
        netsimplex.require()  # the clearing's compiled solver: a missing compiler is said here, in one line
        service = build_matcher(env.rpc, env.deployment, db, account, devnet_only=devnet_only)
    except (FileNotFoundError, ConnectionError, ValueError, RuntimeError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"matcher {account.address} on {env.rpc}, API http://{host}:{port} (OpenAPI at /openapi.json)",
               err=True)
    serve(service, host, port, round_seconds, admin_token)


@matcher.command("close-round")
@click.option("--admin-token", envvar="UNDERBID_ADMIN_TOKEN", default=None,
              help="The matcher's admin token [$UNDERBID_ADMIN_TOKEN; default: the running devnet's].")
@common_options
def matcher_close_round(env: Env, admin_token: str | None) -> None:
    """Close the matcher's open round now: clear it and settle it on chain (admin)."""
    token = admin_token or (env.devnet.admin_token if env.devnet else None)
    if not token:
        raise click.UsageError("pass --admin-token (or set $UNDERBID_ADMIN_TOKEN); a devnet's token is used by default")
    with env.progress("closing the round"):
        report = env.matcher().close_round(token)

    def render(console):
        prices = report.get("prices") or {}
        rows = [("round", report.get("round_id")), ("state", report.get("state")), ("orders", report.get("orders")),
                ("bids", report.get("bids")), ("matches", report.get("matches")), ("dropped", report.get("dropped")),
                ("gas used", report.get("gas_used"))]
        rows += _price_rows(env, prices, report.get("price_rules") or {})
        console.print(kv_table("round closed" if report.get("matches") else "nothing to match: round stays open", rows))

    env.emit(report, render)


@matcher.command("round")
@click.argument("round_id", type=click.IntRange(0, 2**64 - 1))
@common_options
def matcher_round(env: Env, round_id: int) -> None:
    """Show a round as the matcher recorded it: state, clearing prices, matches, batches."""
    data = env.matcher().round(round_id)

    def render(console):
        clearing = data.get("clearing") or {}
        rows = [("round", data["id"]), ("state", data["state"])]
        rows += _price_rows(env, clearing.get("prices", {}), clearing.get("price_rules", {}))
        rows.append(("matches", len(clearing.get("matches", []))))
        for b in data.get("batches", []):
            rows.append((f"batch {b['batch']}", f"{b['state']} tx {b['tx_hash']} gas {b['gas_used']}"))
        console.print(kv_table(None, rows))

    env.emit(data, render)


def _price_rows(env: Env, prices: dict[str, Any], rules: dict[str, str]) -> list[tuple[str, str]]:
    """One row per market: its short label, and its price (UBC per unit-hour) with the reason."""
    from underbid.protocol.catalogue import market_label
    from underbid.protocol.pricing import explain_price

    specs: dict[str, str | None] = {}
    if prices:
        try:
            specs = {row["market"]: row.get("spec") for row in env.matcher().markets()}
        except Exception:  # noqa: BLE001 - the labels are decoration: fall back to the market id
            specs = {}
    def label(market: str) -> str:
        spec = specs.get(market)
        return market_label(spec) if spec else f"{market[:10]}…"

    return [(f"price, {label(m)}", explain_price(int(p), rules.get(m))) for m, p in prices.items()]


# ----- the matcher's bond -----


def _when(ts: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _address(ctx, param, value: str | None) -> str | None:
    if value is None:
        return None
    from eth_utils import is_hex_address, to_checksum_address

    if not is_hex_address(value):
        raise click.BadParameter(f"{value!r} is not an address (0x and 40 hex digits)", ctx=ctx, param=param)
    return to_checksum_address(value)


def _exit_text(info: dict) -> str:
    if not info["exiting"]:
        return "no"
    if info["withdrawable"]:
        return f"yes: the bond is withdrawable now (since {_when(info['withdrawable_at'])})"
    return f"yes: the bond is withdrawable at {_when(info['withdrawable_at'])} (in {ago(info['exit_left'])})"


def _bond_rows(info: dict) -> list[tuple[str, str]]:
    if info["bonded"]:
        settles = "yes"
    elif info["exiting"]:
        settles = "no: it asked to leave"
    elif info["bond"] == 0:
        settles = "no: no bond"
    else:
        settles = f"no: {ubt_short(info['min_bond'] - info['bond'])} UBT below the minimum"
    return [
        ("matcher", info["address"]),
        ("bond", f"{ubt_short(info['bond'])} UBT"),
        ("minimum bond", f"{ubt_short(info['min_bond'])} UBT"
         + (" (met)" if info["meets_minimum"] else " (not met)")),
        ("bonded (may settle)", settles),
        ("receipt signer", info.get("receipt_signer") or "none yet (fixed by the first bond)"),
        ("exiting", _exit_text(info)),
        ("challenge window", ago(info["challenge_window"])),
        ("exit delay", ago(info["exit_delay"])),
    ]


@matcher.command("bond")
@click.option("--amount", type=UBT, required=True,
              help="UBT to add to your matcher bond, e.g. 10000 (the minimum: see `matcher status`).")
@click.option("--receipt-signer", callback=_address, default=None, metavar="0x...",
              help="The key that signs this matcher's receipts (default: the one fixed by an earlier bond, else"
                   " this account). Fixed while the matcher is bonded.")
@common_options
def matcher_bond(env: Env, amount: int, receipt_signer: str | None) -> None:
    """Bond UBT as a matcher (approves the settlement contract for it first)."""
    client = env.client()
    with env.progress("bonding"):
        result = client.bond_matcher(amount, receipt_signer)
    info = client.matcher_bond(client.address)
    data = {**info, **result}

    def render(console):
        if info["meets_minimum"]:
            verdict = "it meets the minimum: this matcher may settle rounds"
        else:
            verdict = (f"below the minimum of {ubt_short(info['min_bond'])} UBT: bond"
                       f" {ubt_short(info['min_bond'] - info['bond'])} UBT more before this matcher can settle")
        console.print(f"bonded {ubt_short(amount)} UBT: the bond is now {ubt_short(info['bond'])} UBT; {verdict}")

    # `bonded` is the amount just bonded here (in `matcher status`, whether the matcher is bonded).
    env.emit(data, render, amounts={"bonded": Unit.UBT})


@matcher.command("unbond")
@common_options
def matcher_unbond(env: Env) -> None:
    """Ask to leave: stop settling now; the bond can be withdrawn after the exit delay."""
    from underbid.client.session import UnderbidError

    client = env.client()
    info = client.matcher_bond(client.address)
    if info["exiting"]:
        left = "withdraw it now" if info["withdrawable"] else f"it can be withdrawn in {ago(info['exit_left'])}"
        raise UnderbidError(f"MatcherExiting(matcher={client.address}): this matcher already asked to leave:"
                            f" {left} (`underbid matcher withdraw`)")
    if info["bond"] == 0:
        raise UnderbidError(f"MatcherNotBonded(matcher={client.address}): this account has no matcher bond to unbond")
    with env.progress("requesting the matcher exit"):
        result = client.request_matcher_exit()
    info = client.matcher_bond(client.address)
    data = {**info, **result}

    def render(console):
        console.print(
            f"exit requested: this matcher can no longer settle rounds, from now on. Its bond of"
            f" {ubt_short(info['bond'])} UBT can be withdrawn at {_when(info['withdrawable_at'])}"
            f" (in {ago(info['exit_left'])}) with `underbid matcher withdraw`.")
        console.print(
            f"Why the wait: the exit delay ({ago(info['exit_delay'])}) is longer than the challenge window"
            f" ({ago(info['challenge_window'])}), so every round this matcher settled can still be challenged,"
            " and its bond slashed, until that round's window has closed.")

    env.emit(data, render)


@matcher.command("withdraw")
@common_options
def matcher_withdraw(env: Env) -> None:
    """Withdraw the matcher bond once the exit delay is over (shows the time left before)."""
    from underbid.client.session import UnderbidError

    client = env.client()
    info = client.matcher_bond(client.address)
    if not info["exiting"]:
        raise UnderbidError(f"ExitNotRequested(matcher={client.address}): ask to leave first"
                            " (`underbid matcher unbond`); the bond can be withdrawn after the exit delay")
    if not info["withdrawable"]:
        raise UnderbidError(
            f"ExitDelayNotOver(exitAt={_when(info['withdrawable_at'])}): the matcher bond of"
            f" {ubt_short(info['bond'])} UBT"
            f" can be withdrawn in {ago(info['exit_left'])}"
        )
    with env.progress("withdrawing the matcher bond"):
        result = client.withdraw_matcher_bond()
    data = {**result, "address": client.address, "ubt": client.ubt_balance(client.address)}
    env.emit(data, lambda c: c.print(
        f"withdrew {ubt_short(result['withdrawn'])} UBT of matcher bond; {client.address} now holds"
        f" {ubt_short(data['ubt'])} UBT"), amounts=STAKE)


@matcher.command("status")
@click.option("--address", callback=_address, default=None, metavar="0x...",
              help="The matcher to show (default: --account's address).")
@common_options
def matcher_status(env: Env, address: str | None) -> None:
    """A matcher's bond: amount, minimum, whether it may settle, its exit, the challenge window."""
    if address is None:
        if not env.account_name:
            raise click.UsageError("say which matcher: pass --address <0x...> or --account <name>")
        client = env.client()
        address = client.address
    else:
        client = env.client(account=False)
    info = client.matcher_bond(address)
    env.emit(info, lambda c: c.print(kv_table("matcher bond", _bond_rows(info))))


COMMANDS = [matcher]
