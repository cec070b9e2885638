"""`underbid devnet up | down | status | fund | advance` and `underbid demo`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from underbid.cli._common import AmountType, DurationType, Env, common_options, kv_table, ubt_short
from underbid.devnet.node import (
    BUYERS,
    DEPLOYER,
    FUND_UBT,
    MATCHER,
    PROVIDERS,
    REPORTER,
    DevnetError,
    DevnetState,
    UpOutcome,
    dev_account,
)
from underbid.protocol.units import Unit

ETH_OR_ZERO = AmountType(18, "ETH", allow_zero=True)
UBT_OR_ZERO = AmountType(18, "UBT", allow_zero=True)
DIR = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the devnet keeps its state and logs [$UNDERBID_DEVNET_DIR; default: <project>/.underbid].",
)


@click.group()
def devnet() -> None:
    """A local devnet: anvil, the deployed contracts and a matcher."""


def _state_rows(state: DevnetState) -> list[tuple[str, str]]:
    alive = state.alive()
    return [
        ("RPC", f"{state.rpc} (chain {state.chain_id}, anvil pid {state.anvil_pid}"
                f"{'' if alive['anvil'] else ', NOT RUNNING'})"),
        ("matcher", f"{state.matcher_url} (pid {state.matcher_pid}{'' if alive['matcher'] else ', NOT RUNNING'})"),
        ("explorer", f"{state.matcher_url}/explorer (the market explorer page, read-only)"),
        ("admin token", f"{state.admin_token} (for `underbid matcher close-round`)"),
        ("address book", state.deployment),
        *((f"{name} log", path) for name, path in state.logs.items()),
    ]


def _accounts_table() -> Table:
    table = Table("account", "address", "role", title="devnet accounts (public test keys: use --account dev:<n>)")
    roles = {DEPLOYER: "deployer, oracle updater, UBT genesis", MATCHER: "matcher"}
    roles.update({i: f"demo provider {n}" for n, i in enumerate(PROVIDERS, 1)})
    roles.update({i: f"demo buyer {n}" for n, i in enumerate(BUYERS, 1)})
    roles[REPORTER] = "demo reporter"
    for index, role in roles.items():
        if index not in (DEPLOYER, MATCHER):
            role += f" ({ubt_short(FUND_UBT)} UBT at start)"
        table.add_row(f"dev:{index}", dev_account(index).address, role)
    return table


@devnet.command("up")
@click.option("--port", type=click.IntRange(1, 65535), default=8545, show_default=True, envvar="UNDERBID_DEVNET_PORT",
              show_envvar=True, help="anvil's port.")
@click.option("--matcher-port", type=click.IntRange(1, 65535), default=8700, show_default=True,
              envvar="UNDERBID_MATCHER_PORT", show_envvar=True, help="The matcher's (and the explorer's) port.")
@click.option("--round-seconds", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Close matcher rounds on this timer; 0: only on demand (`underbid matcher close-round`).")
@DIR
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def devnet_up(port: int, matcher_port: int, round_seconds: float, directory: Path | None, as_json: bool) -> None:
    """Start anvil, deploy the contracts, fund the demo accounts and start a matcher.

    On a recorded devnet whose matcher died, restart that matcher (same port, token and store);
    if its anvil died, the chain is gone and a fresh devnet starts.
    """
    from underbid.devnet import node as dn

    env = Env(None, None, None, None, as_json, None)
    started = time.perf_counter()
    with env.progress("starting the devnet") as update:
        state = dn.up(port=port, matcher_port=matcher_port, directory=directory, round_seconds=round_seconds,
                      progress=update)
    elapsed = time.perf_counter() - started
    data = {**state.__dict__, "state_file": str(dn.state_path(directory)), "seconds": round(elapsed, 1)}

    def render(console: Console):
        from underbid.chain.deployment import AddressBook

        title = (f"devnet up in {elapsed:.0f} s" if state.outcome is UpOutcome.STARTED
                 else f"devnet up: its matcher was not running and is restarted ({elapsed:.0f} s), store kept")
        console.print(kv_table(title, _state_rows(state)))
        book = AddressBook.load(state.deployment)
        contracts = Table("contract", "address", title="contracts")
        for name in book.contracts:
            contracts.add_row(name, book.address(name))
        console.print(contracts)
        console.print(_accounts_table())
        console.print(
            "next: `underbid demo`, or e.g. `underbid status --account dev:7`; stop with `underbid devnet down`"
        )

    env.emit(data, render)


@devnet.command("down")
@DIR
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def devnet_down(directory: Path | None, as_json: bool) -> None:
    """Stop the devnet's matcher and anvil."""
    from underbid.devnet import node as dn

    env = Env(None, None, None, None, as_json, None)
    stopped = dn.down(directory)
    if stopped is None:
        env.emit({"stopped": None}, lambda c: c.print("no devnet is recorded here: nothing to stop"))
        return
    env.emit({"stopped": stopped}, lambda c: c.print(
        "devnet down: " + ", ".join(f"{k} {'stopped' if v else 'was not running'}" for k, v in stopped.items())))


@devnet.command("status")
@DIR
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def devnet_status(directory: Path | None, as_json: bool) -> None:
    """Show the recorded devnet and whether its processes run."""
    from underbid.devnet import node as dn

    env = Env(None, None, None, None, as_json, None)
    state = DevnetState.load(dn.state_path(directory))
    if state is None:
        raise DevnetError("no devnet is up here: start one with `underbid devnet up`")
    env.emit({**state.__dict__, "alive": state.alive()}, lambda c: c.print(kv_table("devnet", _state_rows(state))))


@devnet.command("fund")
@click.argument("who")
@click.option("--eth", "eth", type=ETH_OR_ZERO, default="10", show_default=True, help="ETH to add for gas.")
@click.option(
    "--ubt", "ubt_amount", type=UBT_OR_ZERO, default="0", show_default=True, help="UBT to send from the deployer."
)
@common_options
def devnet_fund(env: Env, who: str, eth: int, ubt_amount: int) -> None:
    """Devnet faucet: give WHO (an account name or address) ETH for gas and UBT."""
    from eth_utils import is_hex_address, to_checksum_address

    from underbid.client.wallet import find_account
    from underbid.devnet import node as dn

    address = to_checksum_address(who) if is_hex_address(who) else find_account(who).address
    client = env.client(account=False)
    with env.progress("funding"):
        dn.fund(client, address, eth=eth, ubt=ubt_amount)
    data = {"address": address, "eth": client.eth_balance(address), "ubt": client.ubt_balance(address)}
    env.emit(data, lambda c: c.print(
        f"{address} now holds {ubt_short(data['eth'])} ETH and {ubt_short(data['ubt'])} UBT"))


@devnet.command("advance")
@click.argument("duration", type=DurationType("s", maximum=10 * 365 * 86400))
@click.option("--no-price", is_flag=True, help="Do not re-post the oracle price afterwards.")
@common_options
def devnet_advance(env: Env, duration: int, no_price: bool) -> None:
    """Move the devnet's clock forward DURATION (90s, 30m, 2h) and re-post the oracle price."""
    from underbid.devnet import node as dn

    client = env.client(account=False)
    now = dn.advance(client, duration, repost_price=not no_price)
    env.emit({"advanced": duration, "chain_time": now}, lambda c: c.print(
        f"advanced {duration} s; chain time is now {now}" + ("" if no_price else "; oracle price re-posted")))


@click.command("demo")
@click.option("--minutes", type=click.IntRange(3, 600), default=20, show_default=True,
              help="Chain minutes the leases run before claims and the fault report.")
@click.option("--admin-token", envvar="UNDERBID_ADMIN_TOKEN", default=None,
              help="The matcher's admin token [default: the running devnet's].")
@click.option("--keep", is_flag=True, help="Leave a devnet this command started running afterwards.")
@DIR
@common_options
def demo(env: Env, minutes: int, admin_token: str | None, keep: bool, directory: Path | None) -> None:
    """Run a whole market on the devnet, narrated, and check that credits and UBT are conserved.

    Uses the running devnet (`underbid devnet up`), or starts one (and stops it afterwards unless --keep).
    """
    from underbid.devnet import node as dn
    from underbid.devnet.demo import run_demo

    console = env.console
    started_here = False
    if directory is not None:
        env._devnet = DevnetState.load(dn.state_path(directory))
    if env.rpc_option is None and env.network_option is None and env.devnet is None:
        with env.progress("no devnet is up: starting one") as update:
            env._devnet = started = dn.up(directory=directory, progress=update, **_ports_from_env())
        started_here = True
        if not env.json:
            console.print(f"started a devnet at {started.rpc} (matcher {started.matcher_url})")
    token = admin_token or (env.devnet.admin_token if env.devnet else None)
    if not token:
        raise click.UsageError("pass --admin-token: the demo closes the matcher's round on demand")
    try:
        client = env.client(account=False)
        dn.require_devnet(client, "the demo (it trades as the dev keys and moves the clock)")
        result = run_demo(client, env.matcher(), token, minutes=minutes, console=console, quiet=env.json)
    finally:
        if started_here and not keep:
            dn.down(directory)
    data = {"seconds": round(result.seconds, 1), "round": result.round_id, "prices": result.prices,
            "price_rules": result.price_rules, "price_reasons": result.price_reasons,
            "leases": result.leases, "fault": result.fault, "claims": result.claims, "early_close": result.early_close,
            "skipped_heartbeats": result.skipped_heartbeats,
            "redemptions": result.redemptions, "balances": result.balances, "checks": result.checks,
            "conserved": result.conserved}
    # The conservation checks compare credits (UBC) or UBT, as each check's name says.
    checks = {f"checks.{name}.{side}": unit for name, unit in
              (("credits", Unit.UBC), ("escrow backed", Unit.UBC), ("UBT", Unit.UBT), ("stake backed", Unit.UBT))
              for side in ("left_value", "right_value")}
    env.emit(data, lambda c: c.print(
        f"\n[bold green]demo complete in {result.seconds:.0f} s: credits and UBT conserved[/]"), amounts=checks)


def _ports_from_env() -> dict[str, int]:
    """The ports `devnet up` would take from $UNDERBID_DEVNET_PORT / $UNDERBID_MATCHER_PORT, for the
    devnet `demo` starts itself; a value that is not a port is one clear line."""
    ports = {}
    for name, key in (("UNDERBID_DEVNET_PORT", "port"), ("UNDERBID_MATCHER_PORT", "matcher_port")):
        text = os.environ.get(name)
        if text:
            if not text.isdigit() or not 1 <= int(text) <= 65535:
                raise click.BadParameter(f"{text!r} is not a port (1-65535)", param_hint=f"${name}")
            ports[key] = int(text)
    return ports


COMMANDS = [devnet, demo]
