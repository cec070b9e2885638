"""`underbid matcher run | close-round | round`."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from underbid.cli._common import DEFAULT_DEPLOYMENT, Env, common_options, kv_table
from underbid.devnet import DEV_RPC, MATCHER, dev_account


@click.group()
def matcher() -> None:
    """Run the off-chain matcher, or close a round on one."""


def _matcher_account(key_env: str, dev: bool):
    key = os.environ.get(key_env)
    if key:
        from eth_account import Account

        try:
            return Account.from_key(key)
        except ValueError as exc:
            raise click.BadParameter(f"${key_env} is not a private key: {exc}", param_hint="--key-env") from None
    if dev:
        return dev_account(MATCHER)
    raise click.UsageError(f"set ${key_env} to the matcher's private key, or pass --dev on a local devnet")


@matcher.command("run")
@click.option("--rpc", default=DEV_RPC, show_default=True, help="Ethereum JSON-RPC URL.")
@click.option("--deployment", type=click.Path(path_type=Path), default=DEFAULT_DEPLOYMENT, show_default=True,
              help="Address book written by `ape run deploy`.")
@click.option("--db", type=click.Path(path_type=Path), default=Path(".underbid/matcher.db"), show_default=True,
              help="SQLite store.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8700, show_default=True, type=click.IntRange(1, 65535))
@click.option("--round-seconds", default=10.0, show_default=True, type=click.FloatRange(min=0),
              help="Close a round this often; 0 closes rounds only on POST /rounds/close.")
@click.option("--admin-token", envvar="UNDERBID_ADMIN_TOKEN", default=None,
              help="Bearer token for POST /rounds/close (or $UNDERBID_ADMIN_TOKEN).")
@click.option("--key-env", default="UNDERBID_MATCHER_KEY", show_default=True,
              help="Environment variable holding the matcher's private key.")
@click.option("--dev", is_flag=True, help="Use the devnet's well-known matcher key when no key is set.")
def matcher_run(rpc, deployment, db, host, port, round_seconds, admin_token, key_env, dev) -> None:
    """Start the matcher: reconcile unfinished rounds, serve the API, close rounds on a timer."""
    from underbid.service import build_matcher, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    account = _matcher_account(key_env, dev)
    try:
        service = build_matcher(rpc, deployment, db, account)
    except (FileNotFoundError, ConnectionError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"matcher {account.address} on {rpc}, API http://{host}:{port} (OpenAPI at /openapi.json)", err=True)
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
        from underbid.units import format_credits

        rows += [(f"price {m[:10]}…", f"{format_credits(int(p))} UBC/unit-hour") for m, p in prices.items()]
        console.print(kv_table("round closed" if report.get("matches") else "nothing to match: round stays open", rows))

    env.emit(report, render)


@matcher.command("round")
@click.argument("round_id", type=click.IntRange(0, 2**64 - 1))
@common_options
def matcher_round(env: Env, round_id: int) -> None:
    """Show a round as the matcher recorded it: state, clearing prices, matches, batches."""
    data = env.matcher().round(round_id)

    def render(console):
        from underbid.units import format_credits

        clearing = data.get("clearing") or {}
        rows = [("round", data["id"]), ("state", data["state"])]
        rows += [(f"price {m[:10]}…", f"{format_credits(int(p))} UBC/unit-hour") for m, p in clearing.get("prices", {}).items()]
        rows.append(("matches", len(clearing.get("matches", []))))
        for b in data.get("batches", []):
            rows.append((f"batch {b['batch']}", f"{b['state']} tx {b['tx_hash']} gas {b['gas_used']}"))
        console.print(kv_table(None, rows))

    env.emit(data, render)


COMMANDS = [matcher]
