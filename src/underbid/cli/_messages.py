"""Signed orders and bids, shared by `order` and `bid`: market resolution, posting, listing, cancelling."""

from __future__ import annotations

import time
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


#: how long the matcher may judge by a cached head block (its chain reads' TTL), plus a margin
_MATCHER_CACHE_SECONDS = 2.5


def require_bound(env: Env) -> str:
    """The matcher's address, once this account is bound to it with no change pending (what the
    matcher and settlement require). Raises UnderbidError with the remedy otherwise; sends nothing."""
    from underbid.client.session import UnderbidError

    client = env.client()
    matcher = env.matcher_address()
    state = client.binding(client.address)
    if state["pending"]:
        raise UnderbidError(
            f"the account {client.address} has a pending matcher change to {state['next'] or 'none'}"
            f" (effective in {state['change_left']} s): the matcher takes no messages from it until then")
    if state["matcher"] != matcher:
        where = f"bound to {state['matcher']}" if state["matcher"] else "not bound to any matcher"
        raise UnderbidError(
            f"AccountNotBound(account={client.address}, matcher={matcher}): the account is {where};"
            f" bind it first (`underbid account bind`)")
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
    from underbid.client.session import JournalEntry, MatcherError

    client = env.client()
    matcher = env.matcher()
    signed = [(message, client.sign(message)) for message in messages]

    def send() -> list[dict[str, Any]]:
        if len(signed) > 1:
            return matcher.post_bids(signed, spec)
        ((message, signature),) = signed
        post_one = matcher.post_order if kind == "order" else matcher.post_bid
        return [post_one(message, signature, spec)]

    try:
        acks = send()
    except MatcherError as exc:
        # The matcher judges bindings against a head block it caches for a moment (about 2 s): an
        # account bound a moment ago (`escrow deposit` / `provider stake` bind it) can look unbound
        # to it. The chain says bound (checked before posting), so ask once more after the cache expired.
        if "not bound to this matcher" not in str(exc):
            raise
        time.sleep(_MATCHER_CACHE_SECONDS)
        acks = send()
    results = []
    for (message, signature), ack in zip(signed, acks, strict=True):
        receipt = ack.get("receipt")
        if kind == "bid" and receipt is None:  # older matchers: the stored bid may still carry one
            receipt = (matcher.get_message(kind, ack["digest"]) or {}).get("receipt")
        receipt_problem = check_receipt(client, message, receipt) if kind == "bid" else None
        if receipt_problem:
            click.echo(f"warning: the matcher's receipt cannot back a challenge: {receipt_problem}", err=True)
        env.journal().add(JournalEntry(
            kind=kind, deployment=client.deployment_key(), digest=ack["digest"], signer=client.address,
            nonce=message.nonce, message=message.model_dump(by_alias=True), signature="0x" + signature.hex(),
            spec=spec, matcher=matcher.url, receipt=receipt,
        ))
        results.append({"digest": ack["digest"], "status": ack["status"], "receipt": receipt,
                        "round": receipt.get("round") if receipt else None,
                        "receipt_valid": None if kind != "bid" else receipt_problem is None,
                        "signature": "0x" + signature.hex()})
    if any(result["round"] is None for result in results):
        try:
            open_round = matcher.health().get("open_round")
        except Exception:  # noqa: BLE001 - the round number is decoration; the messages are already accepted
            open_round = None
        for result in results:
            result["round"] = result["round"] if result["round"] is not None else open_round
    return results


def check_receipt(client, bid, receipt: dict[str, Any] | None) -> str | None:
    """Why `receipt` could not back a challenge, or None if it can: it must name this bid and the
    bid's matcher, carry a plausible time and round, and be signed by that matcher's receipt signer
    (`matchers(matcher).receiptSigner`), the matcher being bonded."""
    from underbid.protocol.eip712 import Receipt, SignatureError, recover_signer

    if not receipt:
        return "the matcher returned no receipt"
    try:
        parsed = Receipt(matcher=receipt["matcher"], bid_hash=receipt["bidHash"], round=receipt["round"],
                         issued_at=receipt["issuedAt"])
        signer = recover_signer(parsed.digest(client.domain), bytes.fromhex(receipt["signature"].removeprefix("0x")))
    except (KeyError, ValueError, SignatureError) as exc:
        return f"malformed receipt ({_one(exc)})"
    if parsed.bid_hash != "0x" + bid.digest(client.domain).hex():
        return "it names another bid"
    if parsed.matcher != bid.matcher:
        return f"it names matcher {parsed.matcher}, but the bid names {bid.matcher}"
    if parsed.round == 0 or parsed.issued_at == 0 or parsed.issued_at > client.block_time() + 300:
        return f"implausible round {parsed.round} or time {parsed.issued_at}"
    _, _, _, receipt_signer = client.settlement.functions.matchers(parsed.matcher).call()
    if signer != receipt_signer:
        return f"it is signed by {signer}, not by the matcher's receipt signer {receipt_signer}"
    if not client.settlement.functions.isBondedMatcher(parsed.matcher).call():
        return f"matcher {parsed.matcher} is not bonded"
    return None


def _one(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


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
        remaining = client.settlement.functions.remainingOf(
            bytes.fromhex(entry.digest[2:]), client.address, entry.nonce, total).call()
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
            "units": total, "filled": total - remaining, "status": status,
            "price": message.max_price if kind == "order" else message.price,
            "duration": message.duration if kind == "order" else message.max_duration,
            "deadline": message.deadline, "expires_in": message.deadline - now,
            "matcher_status": stored.get("status") if stored else None,
            "matcher_reason": stored.get("reason") if stored else None,
            "receipt": stored.get("receipt") if stored else None,
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
