"""Lease commands: `lease list | claim | close | heartbeat`, `heartbeat --every`, `report`, `challenge`."""

from __future__ import annotations

import time

import click
from rich.table import Table

from underbid.cli._common import Env, ago, common_options, short, ubc, ubt_short


@click.group()
def lease() -> None:
    """Leases: the escrow payment streams opened by settlement."""


def _specs(env: Env, client) -> dict[str, str]:
    """Market id -> spec, from this machine's journal (best effort, for display)."""
    try:
        entries = env.journal().entries(client.deployment_key())
    except Exception:  # noqa: BLE001 - display only
        return {}
    return {e.message["market"]: e.spec for e in entries if e.spec}


def lease_table(leases, me: str | None, specs: dict[str, str], title: str = "leases") -> Table:
    table = Table("lease", "role", "market", "units", "price", "ends in", "accrued", "claimable", "locked left",
                  "status", title=title)
    for v in leases:
        role = ("buyer" if me and v.buyer == me else "provider" if me and v.provider == me else "-")
        ends = "-" if v.closed else ago(v.end - v.now) if v.end > v.now else "ended"
        status = v.status
        if status == "faulty":
            status = "[red]faulty (reportable)[/]"
        table.add_row(short(v.id), role, specs.get(v.market) or short(v.market), str(v.units), ubc(v.price), ends,
                      ubc(v.accrued), ubc(v.claimable), ubc(v.remaining), status)
    return table


@lease.command("list")
@click.option("--role", type=click.Choice(["buyer", "provider", "any"]), default="any", show_default=True)
@click.option("--all", "include_closed", is_flag=True, help="Include closed leases.")
@common_options
def lease_list(env: Env, role: str, include_closed: bool) -> None:
    """Your leases, as buyer or provider, with live accrued cost and claimable credits."""
    client = env.client()
    me = client.address
    leases = client.leases(buyer=me if role in ("buyer", "any") else None,
                           provider=me if role in ("provider", "any") else None, include_closed=include_closed)
    specs = _specs(env, client)

    def render(console):
        if not leases:
            console.print("no leases" + ("" if include_closed else " open (--all shows closed ones)"))
            return
        console.print(lease_table(leases, me, specs))

    env.emit([v.as_json() for v in leases], render)


def _mine(env: Env, ids: tuple[str, ...], *, as_provider: bool, pick) -> list:
    client = env.client()
    me = client.address
    mine = client.leases(provider=me) if as_provider else client.leases(buyer=me)
    if ids:
        return [client.resolve_lease(i, mine) for i in ids]
    return [v for v in mine if pick(v)]


@lease.command("claim")
@click.argument("lease_ids", nargs=-1)
@common_options
def lease_claim(env: Env, lease_ids: tuple[str, ...]) -> None:
    """Claim what your leases accrued (default: every lease of yours with credits to claim or past its end)."""
    from underbid.client import UnderbidError

    client = env.client()
    leases = _mine(env, lease_ids, as_provider=True,
                   pick=lambda v: v.status == "ended" or (v.status == "running" and v.claimable))
    if not leases:
        raise UnderbidError("nothing to claim: none of your leases has accrued credits (`underbid lease list`;"
                            " a lease with a missed heartbeat can only be reported)")
    with env.progress(f"claiming {len(leases)} lease(s)"):
        result = client.claim([v.id for v in leases])
    env.emit(result, lambda c: c.print(
        f"claimed [bold]{ubc(result['claimed'])} UBC[/bold] from {len(leases)} lease(s)"
        + (f"; closed {len(result['closed'])} ended lease(s)" if result["closed"] else "")))


@lease.command("close")
@click.argument("lease_id")
@common_options
def lease_close(env: Env, lease_id: str) -> None:
    """Close a lease early as its buyer: the provider is paid what accrued, you are refunded the rest."""
    client = env.client()
    me = client.address
    view = client.resolve_lease(lease_id, client.leases(buyer=me, provider=me))
    with env.progress("closing the lease"):
        result = client.close(view.id)
    env.emit(result, lambda c: c.print(
        f"closed lease {short(view.id)}: provider paid {ubc(result['paid_to_provider'])} UBC,"
        f" refunded [bold]{ubc(result['refunded'])} UBC[/bold] to your free escrow"))


def _heartbeat_once(env: Env, lease_ids: tuple[str, ...]) -> dict | None:
    client = env.client()
    leases = _mine(env, lease_ids, as_provider=True, pick=lambda v: v.active)
    if not leases:
        return None
    return client.heartbeat([v.id for v in leases])


@lease.command("heartbeat")
@click.argument("lease_ids", nargs=-1)
@common_options
def lease_heartbeat(env: Env, lease_ids: tuple[str, ...]) -> None:
    """Send one heartbeat for your running leases (default: all of them, in one transaction)."""
    with env.progress("sending heartbeats"):
        result = _heartbeat_once(env, lease_ids)
    if result is None:
        env.emit({"leases": [], "at": None}, lambda c: c.print("no running leases to heartbeat"))
        return
    env.emit(result, lambda c: c.print(f"heartbeat for {len(result['leases'])} lease(s) at chain time {result['at']}"))


@click.command("heartbeat")
@click.option("--every", type=click.FloatRange(min=1), default=60, show_default=True, metavar="SECONDS",
              help="Seconds between heartbeats (stay below the protocol's interval).")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after this many rounds (default: until Ctrl-C).")
@common_options
def heartbeat_loop(env: Env, every: float, count: int | None) -> None:
    """Keep heartbeating all your running leases until stopped (Ctrl-C)."""
    client = env.client()
    interval = client.params()["heartbeatInterval"]
    if every >= interval and not env.json:
        click.echo(f"warning: --every {every:g} is not below the heartbeat interval ({interval} s); leases may be reported",
                   err=True)
    sent = 0
    try:
        while count is None or sent < count:
            result = _heartbeat_once(env, ())
            sent += 1
            line = ({"round": sent, "leases": result["leases"], "at": result["at"]} if result
                    else {"round": sent, "leases": [], "at": None})
            if env.json:
                click.echo(__import__("json").dumps(line))
            else:
                env.console.print(f"[{time.strftime('%H:%M:%S')}] " + (
                    f"heartbeat for {len(result['leases'])} lease(s) at chain time {result['at']}" if result
                    else "no running leases"))
            if count is not None and sent >= count:
                break
            time.sleep(every)
    except KeyboardInterrupt:
        if not env.json:
            env.console.print(f"stopped after {sent} heartbeat round(s)")


@click.command("report")
@click.option("--lease", "lease_id", default=None, help="Lease id (or a unique prefix) whose provider missed heartbeats.")
@common_options
def report(env: Env, lease_id: str | None) -> None:
    """Report a missed heartbeat: the lease closes, the provider is slashed, and you are paid a share.

    Without --lease, lists the leases that can be reported now.
    """
    if lease_id is None:
        client = env.client(account=False)
        faulty = [v for v in client.leases(include_closed=False) if v.status == "faulty"]

        def render(console):
            if not faulty:
                console.print("no lease can be reported now")
                return
            console.print(lease_table(faulty, None, _specs(env, client), title="reportable leases"))

        env.emit([v.as_json() for v in faulty], render)
        return
    client = env.client()
    view = client.resolve_lease(lease_id, client.leases())
    with env.progress("reporting the fault"):
        result = client.report(view.id)
    env.emit(result, lambda c: c.print(
        f"reported lease {short(view.id)}: slashed {ubt_short(result['slashed'])} UBT"
        f" ({ubt_short(result['to_buyer'])} to the buyer, {ubt_short(result['to_reporter'])} to you,"
        f" {ubt_short(result['burned'])} burned); buyer refunded {ubc(result['buyer_refund'])} UBC"))


@click.command("challenge")
@click.option("--bid", "bid_digest", required=True, help="Digest (or a unique prefix) of your bid the matcher receipted.")
@click.option("--round", "round_id", type=click.IntRange(0, 2**64 - 1), default=None,
              help="The round to challenge (default: the round named in the bid's receipt).")
@click.option("--check", is_flag=True, help="Only check the challenge (a call); send nothing.")
@common_options
def challenge(env: Env, bid_digest: str, round_id: int | None, check: bool) -> None:
    """Prove a wrong allocation with your bid's matcher receipt and slash the matcher's bond.

    Under a uniform price, a valid bid left partly unfilled while a pricier bid in the same market
    won a lease of that round proves the allocation wrong. The witness lease is found on chain.
    """
    from underbid.cli._messages import find_entry
    from underbid.client import UnderbidError

    client = env.client()
    if not client.has_function("challenge"):
        raise UnderbidError("this deployment has no `challenge` function (matcher bonds are not deployed there)")
    entry = find_entry(env, "bid", bid_digest)
    bid = entry.model()
    receipt = entry.receipt or (env.matcher().get_message("bid", entry.digest) or {}).get("receipt")
    if not receipt:
        raise UnderbidError(f"no matcher receipt for bid {short(entry.digest)}: a challenge needs the matcher's signed receipt")
    if round_id is None:
        round_id = int(receipt["round"])
    witness = _find_witness(env, client, round_id, bid)
    if witness is None:
        raise UnderbidError(
            f"round {round_id} has no lease in this market from a bid priced above yours ({ubc(bid.price)} UBC)"
            " with a duration your bid accepts: the allocation passed over nothing, there is nothing to challenge")
    order_digest, witness_bid, lease_id = witness
    args = client.challenge_args(round_id, receipt, bid, bytes.fromhex(entry.signature[2:]), order_digest, witness_bid)
    matcher = client.verify_challenge(args)
    if check:
        env.emit({"valid": True, "matcher": matcher, "round": round_id, "witness": lease_id}, lambda c: c.print(
            f"the challenge holds: matcher {matcher} would be slashed (witness lease {short(lease_id)})"))
        return
    with env.progress("challenging"):
        result = client.challenge(args)
    result.update(round=round_id, witness=lease_id)
    env.emit(result, lambda c: c.print(
        f"challenge succeeded: matcher {matcher} slashed {ubt_short(result.get('slashed', 0))} UBT,"
        f" {ubt_short(result.get('toChallenger', 0))} UBT to you"))


def _find_witness(env: Env, client, round_id: int, bid) -> tuple[str, object, str] | None:
    """A lease of `round_id` in `bid`'s market whose bid is pricier and whose duration `bid` accepts."""
    from underbid.eip712 import Bid

    logs = client.settlement.events.LeaseOpened.get_logs(from_block=client.book.block,
                                                         argument_filters={"round": round_id})
    matcher = env.matcher()
    for log in logs:
        a = log["args"]
        if "0x" + bytes(a["market"]).hex() != bid.market.lower() or a["end"] - a["start"] > bid.max_duration:
            continue
        stored = matcher.get_message("bid", "0x" + bytes(a["bidDigest"]).hex())
        if not stored:
            continue
        other = Bid.model_validate(stored["message"])
        if other.price > bid.price:
            return "0x" + bytes(a["orderDigest"]).hex(), other, "0x" + bytes(a["leaseId"]).hex()
    return None


COMMANDS = [lease, heartbeat_loop, report, challenge]
