"""Lease commands: `lease list | claim | close | heartbeat`, `heartbeat --every`, `report`, `challenge`."""

from __future__ import annotations

import time

import click
from rich import box
from rich.console import Console
from rich.table import Table

from underbid.cli._common import Env, common_options, short, ubc, ubt_short, when
from underbid.protocol.catalogue import market_label


@click.group()
def lease() -> None:
    """Leases: the escrow payment streams opened by settlement."""


def _specs(env: Env, client) -> dict[str, str]:
    """Market id -> its short label, from this machine's journal (best effort, for display)."""
    try:
        entries = env.journal().entries(client.deployment_key())
    except Exception:  # noqa: BLE001 - display only
        return {}
    return {e.message["market"]: market_label(e.spec) for e in entries if e.spec}


def _lease_status(v) -> str:
    """The status with what a user acts on: why it ended, or when its next heartbeat is due."""
    if v.status == "faulty":
        return "[red]faulty (reportable)[/]"
    reason = v.end_reason
    if v.closed and reason is not None:
        return f"closed: {reason}"
    if v.status == "ended":
        return "ended: claim or close it"
    due = v.heartbeat_due
    return f"running\nheartbeat due {when(due, v.now)}" if due is not None else v.status


def lease_table(leases, me: str | None, specs: dict[str, str], title: str = "leases", *, wide: bool = False) -> Table:
    """Leases as a table that fits 80 columns; `wide` adds the role, accrued, claimable and locked credits.

    Each row names the other side: the provider on a buyer's lease, the buyer on a provider's.
    """
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    # Ids are never cut (a prefix is what `lease close`/`report` take); text columns wrap instead.
    table.add_column("lease", no_wrap=True)
    table.add_column("market", overflow="fold")
    if wide:
        table.add_column("role")
    table.add_column("with", no_wrap=True)
    table.add_column("units×price")
    table.add_column("ends", min_width=11)
    for name in ("accrued", "claimable", "locked left") if wide else ():
        table.add_column(name)
    table.add_column("status", min_width=16)
    for v in leases:
        role = ("buyer" if me and v.buyer == me else "provider" if me and v.provider == me else "-")
        other = v.buyer if role == "provider" else v.provider
        row = [short(v.id, 4), specs.get(v.market) or short(v.market, 4), short(other, 4),
               f"{v.units} × {ubc(v.price)}", when(v.end, v.now).replace(" (", "\n(")]
        if wide:
            row[2:2] = [role]
            row += [ubc(v.accrued), ubc(v.claimable), ubc(v.remaining)]
        table.add_row(*row, _lease_status(v))
    return table


@lease.command("list")
@click.option("--role", type=click.Choice(["buyer", "provider", "any"]), default="any", show_default=True)
@click.option("--all", "include_closed", is_flag=True, help="Include closed leases.")
@click.option("--wide", is_flag=True, help="More columns (role, claimable, locked), for terminals over 80 columns.")
@common_options
def lease_list(env: Env, role: str, include_closed: bool, wide: bool) -> None:
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
        console.print(lease_table(leases, me, specs, wide=wide))

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
    from underbid.client.session import UnderbidError

    client = env.client()
    leases = _mine(env, lease_ids, as_provider=True,
                   pick=lambda v: v.status == "ended" or (v.status == "running" and v.claimable))
    if not leases:
        raise UnderbidError("nothing to claim: none of your leases has accrued credits (`underbid lease list`;"
                            " a lease with a missed heartbeat can only be reported)")
    with env.progress(f"claiming {len(leases)} lease(s)"):
        result = client.claim([v.id for v in leases])

    def render(console):
        claimed_from = len(leases) - len(result["skipped"])
        console.print(f"claimed [bold]{ubc(result['claimed'])} UBC[/bold] from {claimed_from} lease(s)"
                      + (f"; closed {len(result['closed'])} ended lease(s)" if result["closed"] else ""))
        _print_skipped(console, result["skipped"])

    env.emit(result, render)


_SKIP_TEXT = {
    "closed": "it is closed (by its buyer, a claim or a report)",
    "ended": "it is past its end: claim it (`underbid lease claim`)",
    "fault pending": "a heartbeat was missed: it can end only through a fault report",
}


def _print_skipped(console, skipped: list[dict]) -> None:
    """One line per lease the contract skipped, with the reason."""
    for s in skipped:
        console.print(f"skipped lease {short(s['lease'])}: {_SKIP_TEXT.get(s['reason'], s['reason'])}")


def _heartbeat_line(result: dict) -> str:
    text = f"heartbeat for {len(result['leases'])} lease(s) at chain time {result['at']}"
    if result["skipped"]:
        text += f"; skipped {len(result['skipped'])}: " + ", ".join(
            f"{short(s['lease'])} ({s['reason']})" for s in result["skipped"])
    return text


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
    """Send one heartbeat for your running leases (default: all of them, in one transaction).

    Leases that are closed, past their end or have a reportable fault are skipped by the contract
    (the rest still get their heartbeat); each skipped lease is printed with the reason.
    """
    with env.progress("sending heartbeats"):
        result = _heartbeat_once(env, lease_ids)
    if result is None:
        # Say why: a lease that `lease list` shows may be past its end or already reportable.
        client = env.client()
        others = [v for v in client.leases(provider=client.address, include_closed=False) if not v.active]
        faulty = "faulty (reportable: a heartbeat no longer helps)"
        reasons = ", ".join(f"{short(v.id, 4)} {faulty if v.status == 'faulty' else v.status}" for v in others)
        env.emit({"leases": [], "skipped": [], "at": None, "not_running": [
            {"lease": v.id, "status": v.status} for v in others]},
            lambda c: c.print("no running leases to heartbeat" + (f"; not running: {reasons}" if reasons else "")))
        return

    def render(console: Console) -> None:
        console.print(_heartbeat_line(result))
        _print_skipped(console, result["skipped"])

    env.emit(result, render)


@click.command("heartbeat")
@click.option("--every", type=click.FloatRange(min=1), default=60, show_default=True, metavar="SECONDS",
              help="Seconds between heartbeats (stay below the protocol's interval).")
@click.option(
    "--count", type=click.IntRange(min=1), default=None, help="Stop after this many rounds (default: until Ctrl-C)."
)
@common_options
def heartbeat_loop(env: Env, every: float, count: int | None) -> None:
    """Keep heartbeating all your running leases until stopped (Ctrl-C)."""
    client = env.client()
    interval = client.params()["heartbeatInterval"]
    if every >= interval and not env.json:
        click.echo(
            f"warning: --every {every:g} is not below the heartbeat interval ({interval} s); leases may be reported",
            err=True,
        )
    from underbid.client.session import ChainError

    sent = 0
    try:
        while count is None or sent < count:
            try:
                result = _heartbeat_once(env, ())
                problem = None
            except ChainError as exc:  # one failed round (a node hiccup) must not stop the loop
                result, problem = None, str(exc)
            sent += 1
            line = ({"round": sent, "leases": result["leases"], "skipped": result["skipped"], "at": result["at"]}
                    if result else {"round": sent, "leases": [], "skipped": [], "at": None, "error": problem})
            if env.json:
                click.echo(__import__("json").dumps(line))
            elif problem:
                click.echo(f"[{time.strftime('%H:%M:%S')}] warning: this round's heartbeat failed: {problem}", err=True)
            else:
                env.console.print(f"[{time.strftime('%H:%M:%S')}] " + (_heartbeat_line(result) if result
                                                                       else "no running leases"))
            if count is not None and sent >= count:
                break
            time.sleep(every)
    except KeyboardInterrupt:
        if not env.json:
            env.console.print(f"stopped after {sent} heartbeat round(s)")


@click.command("report")
@click.option(
    "--lease", "lease_id", default=None, help="Lease id (or a unique prefix) whose provider missed heartbeats."
)
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
@click.option(
    "--bid", "bid_digest", required=True, help="Digest (or a unique prefix) of your bid the matcher receipted."
)
@click.option("--round", "round_id", type=click.IntRange(1, 2**64 - 1), default=None,
              help="Only look for a witness lease in this round of the matcher (default: every round from the"
                   " receipt's on).")
@click.option("--check", is_flag=True, help="Only check the challenge (a call); send nothing.")
@common_options
def challenge(env: Env, bid_digest: str, round_id: int | None, check: bool) -> None:
    """Prove a wrong allocation with your bid's matcher receipt and slash the matcher's bond.

    Goes to the MatcherCourt. A witness is a lease the matcher opened in a round from your receipt's
    on, in your bid's market, from a bid priced above yours, with a duration your bid accepts. It
    proves the allocation wrong if your bid had a unit to spare (spare-unit proof), or if your bid
    had a strictly shorter lease in the same round (swap proof). Witnesses are found on chain, their
    bids at the matcher; every candidate is checked with the court's `verifyChallenge` first.
    """
    from underbid.cli._messages import find_entry
    from underbid.client.session import ChainError, UnderbidError

    client = env.client()
    entry = find_entry(env, "bid", bid_digest)
    bid = entry.model()
    receipt = entry.receipt or (env.matcher().get_message("bid", entry.digest) or {}).get("receipt")
    if not receipt:
        raise UnderbidError(
            f"no matcher receipt for bid {short(entry.digest)}: a challenge needs the matcher's signed receipt"
        )
    if "matcher" not in receipt:
        raise UnderbidError(
            f"the receipt for bid {short(entry.digest)} names no matcher: it predates this protocol version"
        )
    candidates, fill_lease = _witnesses(env, client, bid, entry.digest, int(receipt["round"]), round_id)
    if not candidates:
        where = f"round {round_id}" if round_id is not None else f"the matcher's rounds from {receipt['round']} on"
        raise UnderbidError(
            f"{where} have no lease in this market from a bid priced above yours ({ubc(bid.price)} UBC)"
            " with a duration your bid accepts: the allocation passed over nothing, there is nothing to challenge")
    bid_sig = bytes.fromhex(entry.signature[2:])
    first_error: ChainError | None = None
    chosen = None
    for witness in candidates:
        for own in (None, *witness["own_orders"]):
            args = client.challenge_args(receipt, bid, bid_sig, witness["round"], witness["order"], witness["bid"], own,
                                         fill_lease)
            try:
                matcher = client.verify_challenge(args)
            except ChainError as exc:
                first_error = first_error or exc
                continue
            chosen = (witness, own, args, matcher)
            break
        if chosen:
            break
    if chosen is None:
        assert first_error is not None  # there were candidates and each attempt failed with a ChainError
        raise first_error  # the court's named error for the most direct proof of the nearest witness
    witness, own, args, matcher = chosen
    proof = "swap" if own else "spare unit"
    if check:
        env.emit(
            {"valid": True, "matcher": matcher, "round": witness["round"], "witness": witness["lease"], "proof": proof},
            lambda c: c.print(
                f"the challenge holds ({proof} proof): matcher {matcher} would be slashed"
                f" (witness lease {short(witness['lease'])}, round {witness['round']})"
            ),
        )
        return
    with env.progress("challenging"):
        result = client.challenge(args)
    result.update(round=witness["round"], witness=witness["lease"], proof=proof)
    env.emit(result, lambda c: c.print(
        f"challenge succeeded ({proof} proof): matcher {matcher} slashed {ubt_short(result.get('slashed', 0))} UBT,"
        f" {ubt_short(result.get('toChallenger', 0))} UBT to you"))


def _witnesses(env: Env, client, bid, bid_digest: str, receipt_round: int,
               only_round: int | None) -> tuple[list[dict], tuple[int, str] | None]:
    """Candidate witness leases for `bid`, nearest round first: leases of the bid's matcher in rounds
    >= `receipt_round` (or only `only_round`), in its market, whose bid (from the matcher) is pricier
    and whose duration the bid accepts. Each lists `own_orders`: orders of the bid's own strictly
    shorter leases in that round (for the swap proof). Also returns the bid's own latest lease
    (round, order digest), or None: the court's proof of the round that used up a bid filled in one go."""
    from underbid.protocol.eip712 import Bid

    logs = client.settlement.events.LeaseOpened.get_logs(from_block=client.book.block)
    matcher_api = env.matcher()
    mine: dict[int, list[tuple[str, int]]] = {}
    found = []
    fill_lease: tuple[int, str] | None = None
    for log in logs:
        a = log["args"]
        if a["matcher"].lower() != bid.matcher.lower() or "0x" + bytes(a["market"]).hex() != bid.market.lower():
            continue
        r = int(a["round"])
        if "0x" + bytes(a["bidDigest"]).hex() == bid_digest.lower() and (fill_lease is None or r > fill_lease[0]):
            fill_lease = (r, "0x" + bytes(a["orderDigest"]).hex())
        if r < receipt_round or (only_round is not None and r != only_round):
            continue
        duration = int(a["end"]) - int(a["start"])
        bid_d = "0x" + bytes(a["bidDigest"]).hex()
        if bid_d == bid_digest.lower():
            mine.setdefault(r, []).append(("0x" + bytes(a["orderDigest"]).hex(), duration))
            continue
        if duration > bid.max_duration:
            continue
        found.append((r, duration, bid_d, "0x" + bytes(a["orderDigest"]).hex(), "0x" + bytes(a["leaseId"]).hex()))
    candidates = []
    for r, duration, bid_d, order_d, lease_id in sorted(found):
        stored = matcher_api.get_message("bid", bid_d)
        if not stored:
            continue
        other = Bid.model_validate(stored["message"])
        if other.price <= bid.price:
            continue
        candidates.append({"round": r, "order": order_d, "bid": other, "lease": lease_id,
                           "own_orders": [o for o, d in mine.get(r, []) if d < duration]})
    return candidates, fill_lease


COMMANDS = [lease, heartbeat_loop, report, challenge]
