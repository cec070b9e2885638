"""Signed orders and bids, shared by `order` and `bid`: market resolution, posting, listing, cancelling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich import box
from rich.table import Table

from underbid.cli._common import Env, hours, short, ubc
from underbid.protocol.catalogue import market_label


def resolve_market(market: str | None, sdl: Path | None, service: str | None) -> tuple[str, int | None]:
    """(canonical spec, units the SDL asks for or None) from --market or --sdl."""
    if market and sdl:
        raise click.UsageError("give --market or --sdl, not both")
    if not market and not sdl:
        raise click.UsageError(
            "give the market: --market <spec> (e.g. gpu=nvidia-h100;vram=80;gpus=8;region=us-east) or --sdl <file>"
        )
    if market:
        if service:
            raise click.UsageError("--service goes with --sdl")
        return market, None
    from underbid.protocol.sdl import SdlError, load_sdl

    assert sdl is not None  # one of --market and --sdl was given (checked above)
    try:
        found = load_sdl(sdl, service=service)
    except SdlError as exc:
        raise click.BadParameter(f"cannot map the SDL to a market: {exc}", param_hint="--sdl") from None
    return found.spec, found.units


def require_bound(env: Env) -> str:
    """The matcher's address, once this account is bound to it with no change pending (what the
    matcher and settlement require). Raises UnderbidError with the remedy otherwise; sends nothing."""
    from underbid.client.posting import binding_problem
    from underbid.client.session import UnderbidError

    matcher = env.matcher_address()
    problem = binding_problem(env.client(), matcher)
    if problem:
        raise UnderbidError(problem)
    return matcher


def auto_bind(env: Env) -> dict[str, Any] | None:
    """Binds the account to the matcher when it is unbound (one transaction, announced as a line on
    stderr). Returns the binding result, or None when nothing was sent. A binding to another matcher
    or a pending change is reported as a note and left alone."""
    from underbid.client.session import UnderbidError

    client = env.client()
    matcher = env.matcher_address(required=False)
    if matcher is None:
        if not env.json:
            click.echo("note: the matcher cannot be reached: the account was not bound to it"
                       " (`underbid account bind` later)", err=True)
        return None
    try:
        result = client.ensure_bound(matcher)
    except UnderbidError as exc:
        if not env.json:
            click.echo(f"note: {exc}", err=True)
        return None
    if result is not None and not env.json:
        click.echo(f"bound {client.address} to matcher {matcher}: only it may settle your orders and bids", err=True)
    return result


def post(env: Env, kind: str, message, spec: str) -> dict[str, Any]:
    """Signs `message`, posts it to the matcher and journals it. Returns the matcher's answer + extras."""
    return post_many(env, kind, [message], spec)[0]


def post_many(env: Env, kind: str, messages: list, spec: str) -> list[dict[str, Any]]:
    """Signs and posts messages of one kind (several bids go in one all-or-none request) and
    journals each. Returns the matcher's answers + extras, in order."""
    from underbid.client.posting import post_messages

    matcher = env.matcher()
    posted = post_messages(env.client(), matcher, env.journal(), messages, spec)
    for one in posted:
        if one.receipt_problem:
            click.echo(f"warning: the matcher's receipt cannot back a challenge: {one.receipt_problem}", err=True)
    results = [one.as_json() for one in posted]
    if any(result["round"] is None for result in results):
        try:
            open_round = matcher.health().get("open_round")
        except Exception:  # noqa: BLE001 - the round number is decoration; the messages are already accepted
            open_round = None
        for result in results:
            result["round"] = result["round"] if result["round"] is not None else open_round
    return results


def message_rows(env: Env, kind: str, *, only_open: bool) -> list[dict[str, Any]]:
    """This account's journalled orders or bids with their state from the matcher and the chain."""
    from underbid.client.session import MatcherError

    client = env.client()
    entries = env.journal().entries(client.deployment_key(), signer=client.address, kind=kind)
    matcher = env.matcher()
    now = client.block_time()
    reachable = True
    rows = []
    for entry in entries:
        message = entry.model()
        stored = None
        if reachable:
            try:
                stored = matcher.get_message(kind, entry.digest)
            except MatcherError:
                reachable = False
        nonce = client.nonce_state(client.address, entry.nonce)
        total = message.units if kind == "order" else message.capacity
        digest = bytes.fromhex(entry.digest[2:])
        remaining = client.settlement.functions.remainingOf(digest, client.address, entry.nonce, total).call()
        # A void nonce leaves nothing to fill, but what did fill is in the message's fill record.
        filled = int(client.settlement.functions.fills(digest).call()[0]) if nonce == "cancelled" else total - remaining
        if nonce == "cancelled":
            status = "cancelled"
        elif nonce == "cancelling" and remaining:
            status = "cancel requested"
        elif remaining == 0:
            status = "filled"
        elif stored and stored.get("status") == "dropped":
            status = "dropped"
        elif message.deadline < now:
            status = "expired"
        else:
            status = "open" if remaining == total else "partly filled"
        if only_open and status not in ("open", "partly filled"):
            continue
        rows.append({
            "digest": entry.digest, "nonce": entry.nonce, "market": message.market, "spec": entry.spec,
            "units": total, "filled": filled, "status": status,
            "price": message.max_price if kind == "order" else message.price,
            "duration": message.duration if kind == "order" else message.max_duration,
            "deadline": message.deadline, "expires_in": message.deadline - now,
            "matcher_status": stored.get("status") if stored else None,
            "matcher_reason": stored.get("reason") if stored else None,
            "receipt": stored.get("receipt") if stored else None,
            # why the last round left it (partly) unmatched; only while it can still be matched
            "unmatched": stored.get("unmatched") if stored and status in ("open", "partly filled") else None,
        })
    if not reachable and not env.json:
        click.echo(f"note: the matcher at {matcher.url} is unreachable; showing chain state only", err=True)
    return rows


def render_rows(env: Env, kind: str, rows: list[dict[str, Any]]) -> None:
    def render(console):
        if not rows:
            console.print(f"no {kind}s signed by this account on this deployment")
            return
        price_col = "max price" if kind == "order" else "price"
        duration_col = "duration" if kind == "order" else "max duration"
        table = Table("digest", "market", "units" if kind == "order" else "capacity", "filled", price_col,
                      duration_col, "status", title=f"{kind}s", box=box.SIMPLE_HEAD, pad_edge=False)
        for r in rows:
            table.add_row(short(r["digest"], 6), market_label(r["spec"]) if r["spec"] else short(r["market"], 6),
                          str(r["units"]), str(r["filled"]),
                          ubc(r["price"]), hours(r["duration"]), r["status"])
        console.print(table)
        # Why no match, one line per order, below the table (it would not fit 80 columns in one).
        for r in rows:
            if r.get("unmatched"):
                console.print(f"{short(r['digest'], 6)} {r['unmatched']['line']}")

    env.emit(rows, render)


def find_entry(env: Env, kind: str, prefix: str):
    client = env.client()
    text = prefix.lower().removeprefix("0x")
    entries = [e for e in env.journal().entries(client.deployment_key(), signer=client.address, kind=kind)
               if e.digest[2:].startswith(text)]
    if not text or not entries:
        from underbid.client.session import UnderbidError

        raise UnderbidError(f"no {kind} of yours has a digest starting with {prefix!r} (`underbid {kind} list`)"
                            f"; to cancel by nonce use --nonce")
    if len(entries) > 1:
        from underbid.client.session import UnderbidError

        raise UnderbidError(f"digest prefix {prefix!r} matches {len(entries)} {kind}s: give more digits")
    return entries[0]


def cancel(env: Env, kind: str, prefix: str | None, nonce: int | None) -> None:
    if (prefix is None) == (nonce is None):
        raise click.UsageError(f"give the {kind}'s digest (or a unique prefix) or --nonce, not both")
    client = env.client()
    digest = None
    if prefix is not None:
        entry = find_entry(env, kind, prefix)
        nonce, digest = entry.nonce, entry.digest
    with env.progress(f"cancelling the {kind}"):
        result = client.cancel_nonce(nonce)
    result["digest"] = digest
    result["ready_in"] = max(result["ready_at"] - client.block_time(), 0)
    if result["step"] == "requested" and digest is not None:
        # The matcher would see the request at its next round close; told now, it drops the
        # message at once (no longer open in `market list`).
        from underbid.client.session import MatcherError

        try:
            env.matcher().recheck(kind, digest)
        except MatcherError as exc:
            if not env.json:
                click.echo(f"note: the matcher was not told ({exc}); it drops the {kind} at its next round", err=True)

    def render(console):
        what = f"{kind} {short(digest)}" if digest else f"nonce {nonce}"
        if result["step"] == "requested":
            again = (
                f"`underbid {kind} cancel {short(digest, 12).rstrip('…')}`"
                if digest
                else f"`underbid {kind} cancel --nonce {nonce}`"
            )
            console.print(f"cancellation of {what} requested (nonce {nonce}): the matcher no longer fills it;"
                          f" void it on chain with {again} again in {result['ready_in']} s")
        else:
            console.print(f"cancelled {what} on chain (nonce {nonce} is void): it can never fill")

    env.emit(result, render)
