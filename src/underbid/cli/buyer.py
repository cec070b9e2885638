"""Buyer commands: `credits mint | redeem`, `escrow deposit | withdraw`, `order create | list | cancel`."""

from __future__ import annotations

from pathlib import Path

import click

from underbid.cli import _messages
from underbid.cli._amounts import ORACLE_PRICE
from underbid.cli._common import (
    CREDITS,
    PRICE,
    UBT,
    DurationType,
    Env,
    MarketSpecType,
    ago,
    common_options,
    hours,
    kv_table,
    ubc,
    ubt_short,
)

SLIPPAGE = click.option("--slippage", type=click.IntRange(0, 10_000), default=50, show_default=True, metavar="BPS",
                        help="Accept at most this much less than the quote (basis points).")


@click.group()
def credits() -> None:
    """Credits (UBC): mint by burning UBT at the oracle price, redeem for UBT."""


@credits.command("mint")
@click.option("--amount", "--ubt", "ubt_in", type=UBT, required=True, help="UBT to burn, e.g. 100.")
@SLIPPAGE
@common_options
def credits_mint(env: Env, ubt_in: int, slippage: int) -> None:
    """Burn UBT for credits (approves the BME for the UBT first).

    Credits are minted at the oracle band's low end less the mint spread (0.25% on the devnet),
    so a mint followed by a redeem never returns more UBT than it burned.
    """
    client = env.client()
    with env.progress("minting credits"):
        result = client.mint_credits(ubt_in, slippage)
    env.emit(result, lambda c: c.print(
        f"burned {ubt_short(result['ubt_burned'])} UBT, minted [bold]{ubc(result['credits_minted'])} UBC[/bold]"
        f" at {result['price'] / 10**8} USD/UBT (the oracle band's low end), less the"
        f" {result['spread_bps'] / 100:g}% mint spread"), amounts=ORACLE_PRICE)


@credits.command("redeem")
@click.option("--amount", "--credits", "credits_in", type=CREDITS, required=True, help="Credits to redeem, e.g. 25.5.")
@SLIPPAGE
@common_options
def credits_redeem(env: Env, credits_in: int, slippage: int) -> None:
    """Redeem credits for UBT at the oracle price."""
    client = env.client()
    with env.progress("redeeming credits"):
        result = client.redeem(credits_in, slippage)
    env.emit(result, lambda c: c.print(
        f"redeemed {ubc(result['credits_burned'])} UBC for [bold]{ubt_short(result['ubt_minted'])} UBT[/bold]"
        f" at {result['price'] / 10**8} USD/UBT"), amounts=ORACLE_PRICE)


@click.group()
def escrow() -> None:
    """Buyer escrow: credits deposited to pay for leases (free or locked)."""


def _escrow_line(client, result: dict) -> dict:
    free, locked = client.escrow(client.address)
    amount, ready_at = client.pending_withdrawal(client.address)
    result.update(free=free, locked=locked, pending_withdrawal=amount, pending_ready_at=ready_at)
    return result


@escrow.command("deposit")
@click.option("--amount", type=CREDITS, required=True, help="Credits to deposit, e.g. 250.")
@click.option("--no-bind", is_flag=True, help="Do not bind an unbound account to the matcher (--matcher) first.")
@common_options
def escrow_deposit(env: Env, amount: int, no_bind: bool) -> None:
    """Deposit credits into escrow (no approval needed).

    An account not yet bound to any matcher is bound to the matcher (--matcher) first, in one
    transaction: orders are settled only by the matcher their buyer is bound to.
    """
    client = env.client()
    with env.progress("depositing"):
        result = client.deposit(amount)
        result["bound"] = None if no_bind else _messages.auto_bind(env)
        _escrow_line(client, result)
    env.emit(result, lambda c: c.print(
        f"deposited {ubc(amount)} UBC; escrow now {ubc(result['free'])} free, {ubc(result['locked'])} locked"))


@escrow.command("withdraw")
@click.option("--amount", type=CREDITS, default=None,
              help="Credits to announce for withdrawal (default: all free escrow). Leave it out, or give the"
                   " announced amount, to complete an announced withdrawal after its notice.")
@click.option("--complete", is_flag=True, help="Only complete the announced withdrawal (never announce a new one).")
@common_options
def escrow_withdraw(env: Env, amount: int | None, complete: bool) -> None:
    """Withdraw free escrow to your wallet, in two steps with a notice.

    The first run announces the withdrawal (the credits stay free for matching during the notice
    period); running it again after the notice (or with --complete) sends min(announced, free escrow).
    """
    from underbid.client.session import UnderbidError

    client = env.client()
    pending, ready_at = client.pending_withdrawal(client.address)
    finish = complete or (pending and (amount is None or amount == pending))
    if finish:
        if complete and amount is not None and pending and amount != pending:
            raise click.BadParameter(f"the announced withdrawal is {ubc(pending)} UBC: --complete sends that amount",
                                     param_hint="--amount")
        with env.progress("withdrawing"):
            result = _escrow_line(client, client.complete_withdrawal())
        result["step"] = "withdrawn"
        partial = result["withdrawn"] < result["requested"]
        env.emit(result, lambda c: c.print(
            f"withdrew {ubc(result['withdrawn'])} UBC"
            + (f" of the {ubc(result['requested'])} announced (only that much was free)" if partial else "")
            + f"; escrow now {ubc(result['free'])} free, {ubc(result['locked'])} locked"))
        return
    if amount is None:
        amount = client.escrow(client.address)[0]
        if amount == 0:
            raise UnderbidError("your free escrow is empty: nothing to withdraw")
    with env.progress("announcing the withdrawal"):
        result = _escrow_line(client, client.request_withdrawal(amount))
    result["step"] = "requested"
    result["replaced"] = pending or 0
    result["ready_in"] = max(result["ready_at"] - client.block_time(), 0)
    env.emit(result, lambda c: c.print(
        f"announced a withdrawal of {ubc(amount)} UBC"
        + (f" (replacing the one of {ubc(pending)} UBC)" if pending else "")
        + f": complete it with `underbid escrow withdraw` in {ago(result['ready_in'])}"
          " (until then the credits stay free for matching)"))


@escrow.command("show")
@common_options
def escrow_show(env: Env) -> None:
    """Show your escrow: free and locked credits, and any announced withdrawal."""
    client = env.client()
    free, locked = client.escrow(client.address)
    pending, ready_at = client.pending_withdrawal(client.address)
    left = max(ready_at - client.block_time(), 0)
    data = {
        "address": client.address,
        "free": free,
        "locked": locked,
        "available": client.available_escrow(client.address),
        "pending_withdrawal": pending,
        "pending_ready_at": ready_at,
        "pending_ready_in": left,
    }
    rows = [("free", f"{ubc(free)} UBC"), ("locked", f"{ubc(locked)} UBC")]
    if pending:
        rows.append(
            ("announced withdrawal", f"{ubc(pending)} UBC, " + (f"ready in {ago(left)}" if left else "ready now"))
        )
    env.emit(data, lambda c: c.print(kv_table(None, rows)))


@click.group()
def order() -> None:
    """Orders: signed requests for GPU time, posted to the matcher."""


MARKET = click.option("--market", type=MarketSpecType(), default=None,
                      help="Market spec, e.g. 'gpu=nvidia-h100;vram=80;gpus=8;region=us-east'.")
SDL = click.option("--sdl", type=click.Path(path_type=Path, dir_okay=False), default=None,
                   help="Derive the market (and units) from an Akash SDL file's GPU profile.")
SERVICE = click.option("--service", default=None, help="With --sdl: the service to use when several need GPUs.")


@order.command("create")
@MARKET
@SDL
@SERVICE
@click.option("--units", type=click.IntRange(1, 2**32 - 1), default=None,
              help="Units of the market (default: the SDL's count, else 1).")
@click.option("--hours", "duration", type=DurationType("h"), required=True,
              help="Lease length: hours (24) or with a unit (90m, 2d).")
@click.option("--max-price", type=PRICE, required=True, help="Most you pay per unit-hour, in credits (e.g. 2.10).")
@click.option("--valid", type=DurationType("h"), default="1h", show_default=True,
              help="How long the order stays open for matching.")
@common_options
def order_create(env: Env, market, sdl, service, units, duration, max_price, valid) -> None:
    """Sign an EIP-712 order and post it to the matcher."""
    from underbid.chain.view import DecodedError
    from underbid.client.session import ChainError
    from underbid.protocol.eip712 import Order
    from underbid.protocol.markets import market_id

    spec, sdl_units = _messages.resolve_market(market, sdl, service)
    units = units or sdl_units or 1
    client = env.client()
    if duration < client.min_lease_duration:
        # The contract's own refusals, found before anything is signed.
        raise ChainError(f"DurationTooShort(minimum={client.min_lease_duration} s): leases last at least"
                         f" {client.min_lease_duration} s; order a longer --hours",
                         DecodedError("DurationTooShort", {"minimum": client.min_lease_duration}))
    cost = units * max_price * duration // 3600  # the contract's lease cost at the max price
    free = client.available_escrow(client.address)
    if free < cost:
        raise ChainError(
            f"InsufficientEscrow(buyer={client.address}, required={ubc(cost)} UBC, free={ubc(free)} UBC):"
            " deposit more credits (`underbid escrow deposit`) to cover the order at its max price"
            " (credits announced for withdrawal do not count)",
            DecodedError("InsufficientEscrow", {"buyer": client.address, "required": cost, "free": free}),
        )
    matcher = _messages.require_bound(env)
    message = Order(buyer=client.address, matcher=matcher, market=market_id(spec), units=units, duration=duration,
                    max_price=max_price, deadline=client.block_time() + valid,
                    nonce=client.next_nonce(env.journal(), client.deployment_key()))
    with env.progress("posting the order"):
        result = _messages.post(env, "order", message, spec)
    result.update(market=message.market, spec=spec, units=units, duration=duration, max_price=max_price,
                  deadline=message.deadline, nonce=message.nonce, max_cost=cost)

    def render(console):
        console.print(kv_table("order accepted by the matcher", [
            ("digest", result["digest"]), ("market", spec), ("units", units), ("duration", hours(duration)),
            ("max price", f"{ubc(max_price)} UBC/unit-hour"), ("max cost", f"{ubc(cost)} UBC"),
            ("valid for", hours(valid)), ("nonce", message.nonce), ("round", result["round"]),
            ("status", result["status"]),
        ]))

    env.emit(result, render)


@order.command("list")
@click.option("--open", "only_open", is_flag=True, help="Only orders that can still fill.")
@common_options
def order_list(env: Env, only_open: bool) -> None:
    """Your orders (signed on this machine) with fills and status."""
    _messages.render_rows(env, "order", _messages.message_rows(env, "order", only_open=only_open))


@order.command("cancel")
@click.argument("digest", required=False)
@click.option("--nonce", type=click.IntRange(0, 2**256 - 1), default=None, help="Cancel by nonce instead.")
@common_options
def order_cancel(env: Env, digest: str | None, nonce: int | None) -> None:
    """Cancel an order on chain (its nonce), by DIGEST (or a unique prefix) or --nonce.

    Two steps: the first run requests the cancellation (the matcher stops filling it at once); running
    it again after the notice period voids the nonce for good.
    """
    _messages.cancel(env, "order", digest, nonce)


COMMANDS = [credits, escrow, order]
