"""The `underbid` command. Thin: it parses, calls the library and prints."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from underbid.devnet import DEV_RPC, MATCHER, dev_account

DEFAULT_DEPLOYMENT = Path("deployments/local.json")


@click.group()
@click.version_option(package_name="underbid")
def main() -> None:
    """Underbid: a settlement protocol for decentralized GPU compute."""


@main.group()
def matcher() -> None:
    """Run the off-chain matcher."""


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


if __name__ == "__main__":
    main()
