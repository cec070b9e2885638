"""Read-only commands: `status`, `market list | id`, `bme`."""

from __future__ import annotations

from pathlib import Path

import click
from rich import box
from rich.table import Table

from underbid.cli._amounts import ORACLE_PRICE, STAKE
from underbid.cli._common import Env, ago, common_options, kv_table, short, ubc, ubt_short
from underbid.protocol.catalogue import GPU_MODELS, REGIONS, market_label
from underbid.protocol.units import Unit


def bme_rows(state: dict) -> list[tuple[str, str]]:
    fresh = "fresh" if state["price_fresh"] else "[red]stale[/]"
    age = ago(state["price_age"]) if state["price_age"] is not None else "never posted"
    net = state["net_ubt_burned"]
    return [
        ("UBT price", f"{state['price_usd']} USD ({fresh}, posted {age} ago, max age {ago(state['price_max_age'])})"),
        ("mint spread", f"{state['mint_spread_bps'] / 100:g}% ({state['mint_spread_bps']} bps) kept on every mint,"
                        f" minimum mint {ubc(state['min_mint_credits'])} UBC"),
        ("UBT burned for credits", f"{ubt_short(state['total_ubt_burned'])} UBT"),
        ("UBT minted by redemptions", f"{ubt_short(state['total_ubt_minted'])} UBT"),
        ("net UBT burned (BME health)", f"{'-' if net < 0 else ''}{ubt_short(abs(net))} UBT"),
        ("credits minted / burned", f"{ubc(state['total_credits_minted'])} / {ubc(state['total_credits_burned'])} UBC"),
        ("credit supply", f"{ubc(state['credit_supply'])} UBC"),
        (
            "UBT supply",
            f"{ubt_short(state['ubt_supply'])} UBT (slashed and burned: {ubt_short(state['total_slashed_burned'])})",
        ),
        (
            "redemptions",
            # "open" reads as a tripped breaker to an electrician: say what a user can do instead.
            ("[red]halted by the circuit breaker[/]" if state["redemption_halted"] else "allowed")
            + f": {ubt_short(state['net_minted_in_window'])} of {ubt_short(state['redeem_cap'])} UBT net minted"
            f" per {ago(state['redeem_window'])}, {ubt_short(state['redeemable_ubt'])} UBT redeemable now",
        ),
    ]


@click.command("bme")
@common_options
def bme(env: Env) -> None:
    """The burn-mint equilibrium: oracle price, burned/minted totals, circuit breaker."""
    state = env.client(account=False).bme_state()
    env.emit(state, lambda c: c.print(kv_table("burn-mint equilibrium", bme_rows(state))), amounts=ORACLE_PRICE)


@click.group()
def market() -> None:
    """Markets: standardized units of GPU compute."""


@market.command("list")
@common_options
def market_list(env: Env) -> None:
    """Markets the matcher knows, with open orders/bids and the last clearing price."""
    rows = env.matcher().markets()

    def render(console):
        if not rows:
            console.print("the matcher has no markets yet: post an order or a bid")
            return
        table = Table("market", "id", "open orders", "open bids", "last price", "round", title="markets",
                      box=box.SIMPLE_HEAD, pad_edge=False)
        for r in rows:
            price = f"{ubc(int(r['last_price']))} UBC" if r.get("last_price") is not None else "-"
            table.add_row(market_label(r["spec"]) if r.get("spec") else "?", short(r["market"], 6),
                          str(r.get("open_orders") or 0), str(r.get("open_bids") or 0), price,
                          str(r.get("last_round") or "-"))
        console.print(table)
        # Why each last price: a sentence each, below the table (a column would not fit 80 columns).
        for r in rows:
            if r.get("last_price_reason"):
                label = market_label(r["spec"]) if r.get("spec") else short(r["market"], 6)
                console.print(f"{label}, round {r['last_round']}: {r['last_price_reason']}")

    env.emit([{**r, "label": market_label(r["spec"]) if r.get("spec") else None} for r in rows], render)


@market.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def market_models(as_json: bool) -> None:
    """The GPU models and regions a market spec may name (the catalogue specs are checked against)."""
    models = [{"gpu": m.name, "vendor": m.vendor, "model": m.model, "vram": list(m.vram_gb)} for m in GPU_MODELS]

    def render(console):
        table = Table("gpu=", "vram= (GB per GPU)", title="GPU models", box=box.SIMPLE_HEAD, pad_edge=False)
        for m in GPU_MODELS:
            table.add_row(m.name, " or ".join(str(size) for size in m.vram_gb))
        console.print(table)
        console.print("regions (region=): " + ", ".join(REGIONS) + " (no region: any)")

    Env(None, None, None, None, as_json, None).emit({"models": models, "regions": list(REGIONS)}, render)


@market.command("id")
@click.argument("spec", required=False)
@click.option(
    "--sdl", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Derive it from an Akash SDL file."
)
@click.option("--service", default=None, help="With --sdl: the service to use when several need GPUs.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def market_id_cmd(spec: str | None, sdl: Path | None, service: str | None, as_json: bool) -> None:
    """Print the canonical spec and market id of SPEC (or of an SDL file's GPU profile)."""
    from underbid.cli._common import MarketSpecType
    from underbid.cli._messages import resolve_market
    from underbid.protocol.markets import market_id

    canonical = MarketSpecType().convert(spec, None, click.get_current_context()) if spec else None
    canonical, units = resolve_market(canonical, sdl, service)
    data = {"spec": canonical, "label": market_label(canonical), "market": market_id(canonical), "units": units}
    env = Env(None, None, None, None, as_json, None)
    env.emit(data, lambda c: c.print(kv_table(None, [("market", data["label"]), ("spec", canonical),
                                                     ("id", data["market"])]
                                              + ([("units (SDL count)", units)] if units else []))))


@click.command("status")
@common_options
def status(env: Env) -> None:
    """Your balances, escrow, stake, open orders and bids, leases with accrued cost, and BME totals."""
    from underbid.cli import _messages
    from underbid.cli.account import binding_text
    from underbid.cli.leases import _specs, lease_table

    client = env.client()
    me = client.address
    free, locked = client.escrow(me)
    pending, ready_at = client.pending_withdrawal(me)
    binding = client.binding(me)
    now = client.block_time()
    info = client.provider(me)
    leases = client.leases(buyer=me, provider=me, include_closed=False)
    orders = _messages.message_rows(env, "order", only_open=True)
    bids = _messages.message_rows(env, "bid", only_open=True)
    state = client.bme_state()
    data = {
        "address": me,
        "eth": client.eth_balance(me),
        "ubt": client.ubt_balance(me),
        "credits": client.credit_balance(me),
        "escrow_free": free,
        "escrow_locked": locked,
        "binding": binding,
        "pending_withdrawal": pending,
        "pending_ready_at": ready_at,
        "provider": {
            "registered": info.registered,
            "staked": info.staked,
            "locked": info.locked,
            "unbonding": info.unbonding,
            "unbonding_end": info.unbonding_end,
        },
        "orders": orders,
        "bids": bids,
        "leases": [v.as_json() for v in leases],
        "bme": state,
    }

    def render(console):
        rows = [("account", me), ("ETH", ubt_short(data["eth"])), ("UBT", ubt_short(data["ubt"])),
                ("credits", f"{ubc(data['credits'])} UBC"), ("escrow", f"{ubc(free)} UBC free, {ubc(locked)} UBC locked"
                 + (f"; {ubc(pending)} UBC announced for withdrawal, "
                    + (f"ready in {ago(ready_at - now)}" if ready_at > now else "ready now") if pending else "")),
                ("matcher", binding_text(binding))]
        if info.registered:
            rows.append(
                (
                    "stake",
                    f"{ubt_short(info.staked)} UBT ({ubt_short(info.locked)} locked)"
                    + (
                        f", {ubt_short(info.unbonding)} unbonding (ready in {ago(max(info.unbonding_end - now, 0))})"
                        if info.unbonding
                        else ""
                    ),
                )
            )
        console.print(kv_table("balances", rows))
        if orders or bids:
            table = Table(
                "kind", "digest", "market", "units", "filled", "price", "status", title="open orders and bids"
            )
            for kind, rows_ in (("order", orders), ("bid", bids)):
                for r in rows_:
                    label = market_label(r["spec"]) if r["spec"] else short(r["market"], 6)
                    table.add_row(kind, short(r["digest"], 6), label, str(r["units"]),
                                  str(r["filled"]), ubc(r["price"]), r["status"])
            console.print(table)
        if leases:
            console.print(lease_table(leases, me, _specs(env, client), title="open leases"))
        console.print(kv_table("BME", bme_rows(state)[:5]))

    env.emit(data, render, amounts={**ORACLE_PRICE, "price": Unit.PRICE,
                                    **{f"provider.{key}": unit for key, unit in STAKE.items()}})


COMMANDS = [status, market, bme]
