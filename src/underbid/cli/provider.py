"""Provider commands: `provider register | stake | unstake | withdraw | show`, `bid create | ladder | list | cancel`."""

from __future__ import annotations

from pathlib import Path

import click
from rich import box
from rich.table import Table

from underbid.cli import _messages
from underbid.cli._amounts import STAKE
from underbid.cli._common import (
    PRICE,
    UBT,
    DurationType,
    Env,
    MarketSpecType,
    ago,
    common_options,
    hours,
    kv_table,
    short,
    ubc,
    ubt_short,
    when,
)
from underbid.cli.buyer import MARKET, SDL, SERVICE
from underbid.protocol.catalogue import market_label
from underbid.protocol.units import format_credits


@click.group()
def provider() -> None:
    """Providers: register, stake UBT as collateral, run the provider agent, unbond and withdraw."""


def _stake_rows(client, info) -> list[tuple[str, str]]:
    now = client.block_time()
    rows = [("registered", "yes" if info.registered else "no")]
    if info.metadata:
        rows.append(("metadata", info.metadata))
    rows += [
        ("staked", f"{ubt_short(info.staked)} UBT"),
        ("locked as collateral", f"{ubt_short(info.locked)} UBT"),
        ("available for bids", f"{ubt_short(info.available)} UBT ({info.available // client.stake_per_unit} units)"),
    ]
    if info.unbonding:
        left = info.unbonding_end - now
        rows.append(("unbonding", f"{ubt_short(info.unbonding)} UBT (still staked and lockable until then), "
                     + (f"withdrawable in {ago(left)}" if left > 0 else "withdrawable now")))
    return rows


def _provider_data(client) -> dict:
    info = client.provider(client.address)
    now = client.block_time()
    return {
        "address": client.address,
        "registered": info.registered,
        "metadata": info.metadata,
        "staked": info.staked,
        "locked": info.locked,
        "free": info.free,
        "available": info.available,
        "unbonding": info.unbonding,
        "unbonding_end": info.unbonding_end,
        "unbonding_left": max(info.unbonding_end - now, 0) if info.unbonding else 0,
        "stake_per_unit": client.stake_per_unit,
    }


@provider.command("register")
@click.option("--metadata", required=True, help="URI describing you: hardware, region, contact.")
@common_options
def provider_register(env: Env, metadata: str) -> None:
    """Register this account as a provider."""
    client = env.client()
    with env.progress("registering"):
        result = client.register(metadata)
    env.emit(result, lambda c: c.print(f"registered {client.address} as a provider ({metadata})"))


@provider.command("stake")
@click.option(
    "--amount", type=UBT, required=True, help="UBT to stake, e.g. 400 (collateral per unit: see `provider show`)."
)
@click.option("--no-bind", is_flag=True, help="Do not bind an unbound account to the matcher (--matcher) first.")
@common_options
def provider_stake(env: Env, amount: int, no_bind: bool) -> None:
    """Stake UBT (approves the settlement contract for it first).

    An account not yet bound to any matcher is bound to the matcher (--matcher) too, in one
    transaction: bids are settled only by the matcher their provider is bound to.
    """
    client = env.client()
    with env.progress("staking"):
        result = client.stake(amount)
        result["bound"] = None if no_bind else _messages.auto_bind(env)
    result.update(_provider_data(client))
    env.emit(
        result,
        lambda c: c.print(
            kv_table(f"staked {ubt_short(amount)} UBT", _stake_rows(client, client.provider(client.address)))
        ),
        amounts=STAKE,
    )


@provider.command("unstake")
@click.option(
    "--amount", type=UBT, required=True, help="Stake to announce for unbonding (free and not already unbonding)."
)
@common_options
def provider_unstake(env: Env, amount: int) -> None:
    """Announce an unstake: the amount stays staked, and can still be locked by leases settled in the
    meantime, until the unbonding period ends; then `provider withdraw` sends what is free of it."""
    client = env.client()
    with env.progress("requesting unstake"):
        result = client.request_unstake(amount)
    left = result["unlocks_at"] - client.block_time()
    result["unbonding_left"] = max(left, 0)
    env.emit(result, lambda c: c.print(
        f"unbonding {ubt_short(amount)} UBT: withdraw it with `underbid provider withdraw` in {ago(left)}"
        " (until then it stays staked and lockable)"), amounts=STAKE)


@provider.command("withdraw")
@common_options
def provider_withdraw(env: Env) -> None:
    """Withdraw unbonded stake (shows the time left while still unbonding)."""
    from underbid.client.session import UnderbidError

    client = env.client()
    info = client.provider(client.address)
    if not info.unbonding:
        raise UnderbidError(
            "NothingUnbonding: nothing is unbonding: start with `underbid provider unstake --amount ...`"
        )
    left = info.unbonding_end - client.block_time()
    if left > 0:
        raise UnderbidError(
            f"UnbondingNotFinished: {ubt_short(info.unbonding)} UBT is still unbonding: ready in {ago(left)}")
    with env.progress("withdrawing unbonded stake"):
        result = client.withdraw_unbonded()
    short_by = result["announced"] - result["withdrawn"]
    env.emit(result, lambda c: c.print(
        f"withdrew {ubt_short(result['withdrawn'])} UBT of unbonded stake"
        + (f" ({ubt_short(short_by)} UBT of the {ubt_short(result['announced'])} announced is locked as collateral"
           " and stays staked)" if short_by else "")), amounts=STAKE)


@provider.command("show")
@common_options
def provider_show(env: Env) -> None:
    """Show your provider registration and stake."""
    client = env.client()
    data = _provider_data(client)
    env.emit(data, lambda c: c.print(kv_table(None, _stake_rows(client, client.provider(client.address)))),
             amounts=STAKE)


@click.group()
def bid() -> None:
    """Bids: signed offers of GPU capacity, posted to the matcher."""


def _bid_terms(command):
    """The options every bid command shares: its market (--market, or --sdl with --service), the
    longest lease it accepts and how long it stays open."""
    for option in reversed((
        MARKET, SDL, SERVICE,
        click.option("--max-hours", "max_duration", type=DurationType("h"), default="24h", show_default=True,
                     help="Longest lease you accept."),
        click.option("--valid", type=DurationType("h"), default="1h", show_default=True,
                     help="How long the bid stays open for matching (e.g. 2h)."),
    )):
        command = option(command)
    return command


@bid.command("create")
@_bid_terms
@click.option("--capacity", type=click.IntRange(1, 2**32 - 1), required=True, help="Units you offer.")
@click.option("--price", type=PRICE, required=True, help="Your price per unit-hour, in credits (e.g. 1.50).")
@common_options
def bid_create(env: Env, market, sdl, service, capacity, price, max_duration, valid) -> None:
    """Sign an EIP-712 bid, post it to the matcher and show its receipt."""
    from underbid.protocol.eip712 import Bid
    from underbid.protocol.markets import market_id

    spec, _ = _messages.resolve_market(market, sdl, service)
    client = env.client()
    _require_free_stake(client, capacity)
    matcher = _messages.require_bound(env)
    message = Bid(provider=client.address, matcher=matcher, market=market_id(spec), capacity=capacity, price=price,
                  max_duration=max_duration, deadline=client.block_time() + valid,
                  nonce=client.next_nonce(env.journal(), client.deployment_key()))
    with env.progress("posting the bid"):
        result = _messages.post(env, "bid", message, spec)
    result.update(market=message.market, spec=spec, capacity=capacity, price=price, max_duration=max_duration,
                  deadline=message.deadline, nonce=message.nonce)

    def render(console):
        receipt = result.get("receipt")
        console.print(
            kv_table(
                "bid accepted by the matcher",
                [
                    ("digest", result["digest"]),
                    ("market", spec),
                    ("capacity", capacity),
                    ("price", f"{ubc(price)} UBC/unit-hour"),
                    ("max duration", hours(max_duration)),
                    ("valid for", hours(valid)),
                    ("nonce", message.nonce),
                    ("round", result["round"]),
                    ("status", result["status"]),
                    (
                        "receipt",
                        (
                            f"round {receipt['round']}, issued at {receipt['issuedAt']},"
                            f" signed {receipt['signature'][:18]}…"
                            + ("" if result["receipt_valid"] else " (NOT usable for a challenge)")
                        )
                        if receipt
                        else "none (this matcher signs no receipts)",
                    ),
                ],
            )
        )

    env.emit(result, render)


def _require_free_stake(client, units: int) -> None:
    """Refuses early, with the remedy, what the matcher would refuse: bids need registration and
    free stake for their units."""
    from underbid.client.session import UnderbidError

    info = client.provider(client.address)
    if not info.registered:
        raise UnderbidError(f"NotRegistered(provider={client.address}): register first"
                            " (`underbid provider register --metadata <uri>`) and stake")
    if info.available < units * client.stake_per_unit:
        raise UnderbidError(
            f"InsufficientFreeStake(provider={client.address}, required={ubt_short(units * client.stake_per_unit)} UBT,"
            f" free={ubt_short(info.available)} UBT): stake more (`underbid provider stake`) or bid fewer units"
            " (stake announced to unbond does not count)")


@bid.command("ladder")
@_bid_terms
@click.option("--capacity", type=click.IntRange(1, 2**32 - 1), required=True, help="Units offered at each price.")
@click.option("--price", "prices", type=PRICE, multiple=True, required=True,
              help="A price per unit-hour, in credits; repeat for each rung (e.g. --price 1.50 --price 1.80).")
@common_options
def bid_ladder(env: Env, market, sdl, service, capacity, prices, max_duration, valid) -> None:
    """Offer --capacity units at each --price: one signed bid per rung, posted in one request that
    the matcher accepts whole or not at all. The cheapest rungs fill first."""
    from underbid.protocol.eip712 import Bid
    from underbid.protocol.markets import market_id

    if len(set(prices)) != len(prices):
        raise click.BadParameter("each rung needs its own price", param_hint="--price")
    if len(prices) > 1_000:
        raise click.BadParameter("at most 1,000 rungs in one ladder", param_hint="--price")
    spec, _ = _messages.resolve_market(market, sdl, service)
    client = env.client()
    _require_free_stake(client, capacity * len(prices))
    matcher = _messages.require_bound(env)
    first = client.next_nonce(env.journal(), client.deployment_key())
    while not all(client.nonce_is_fresh(client.address, first + i) for i in range(len(prices))):
        first += 1
    deadline = client.block_time() + valid
    messages = [Bid(provider=client.address, matcher=matcher, market=market_id(spec), capacity=capacity, price=price,
                    max_duration=max_duration, deadline=deadline, nonce=first + i)
                for i, price in enumerate(sorted(prices))]
    with env.progress(f"posting {len(messages)} bids"):
        results = _messages.post_many(env, "bid", messages, spec)
    for result, message in zip(results, messages, strict=True):
        result.update(market=message.market, spec=spec, capacity=capacity, price=message.price,
                      max_duration=max_duration, deadline=message.deadline, nonce=message.nonce)

    def render(console):
        table = Table(title=f"{len(results)} bids accepted by the matcher: {spec}")
        for column in ("price (UBC/unit-hour)", "capacity", "nonce", "digest", "round", "receipt"):
            table.add_column(column)
        for r in results:
            table.add_row(ubc(r["price"]), str(capacity), str(r["nonce"]), r["digest"][:18] + "…", str(r["round"]),
                          "signed" if r["receipt_valid"] else "NOT usable for a challenge")
        console.print(table)

    env.emit(results, render)


@bid.command("list")
@click.option("--open", "only_open", is_flag=True, help="Only bids that can still fill.")
@common_options
def bid_list(env: Env, only_open: bool) -> None:
    """Your bids (signed on this machine) with fills and status."""
    _messages.render_rows(env, "bid", _messages.message_rows(env, "bid", only_open=only_open))


@bid.command("cancel")
@click.argument("digest", required=False)
@click.option("--nonce", type=click.IntRange(0, 2**256 - 1), default=None, help="Cancel by nonce instead.")
@common_options
def bid_cancel(env: Env, digest: str | None, nonce: int | None) -> None:
    """Cancel a bid on chain (its nonce), by DIGEST (or a unique prefix) or --nonce.

    Two steps: the first run requests the cancellation (the matcher stops filling it at once); running
    it again after the notice period voids the nonce for good.
    """
    _messages.cancel(env, "bid", digest, nonce)


COMMANDS = [provider, bid]


@provider.command("run")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A TOML file of offers (markets, capacity, prices) and the schedule (README: Providers).")
@click.option("--market", type=MarketSpecType(), default=None,
              help="Instead of --config: the one market to offer capacity in"
              " (e.g. gpu=nvidia-h100;vram=80;gpus=8;region=us-east).")
@click.option("--capacity", type=click.IntRange(1, 2**32 - 1), default=None,
              help="With --market: the units you have there; the agent keeps those not leased offered.")
@click.option("--price", type=PRICE, default=None, help="With --market: your price per unit-hour, in credits.")
@click.option("--max-hours", "max_duration", type=DurationType("h"), default="24h", show_default=True,
              help="With --market: the longest lease you accept.")
@click.option("--valid", type=DurationType("h"), default="1h", show_default=True,
              help="With --market: each bid's lifetime (a new one is posted when it expires).")
@click.option("--heartbeat-every", type=DurationType("s"), default=None,
              help="Heartbeat when the oldest heartbeat is this old (default: half the protocol's interval).")
@click.option("--claim-every", type=DurationType("s"), default="10m", show_default=True,
              help="Claim accrued payment this often (ended leases are claimed at once).")
@click.option("--poll", type=click.FloatRange(0.2, 60), default=2.0, show_default=True, metavar="SECONDS",
              help="Wall-clock seconds between passes.")
@click.option("--ticks", type=click.IntRange(min=1), default=None,
              help="Stop after this many passes (default: until Ctrl-C).")
@common_options
def provider_run(env: Env, config_file: Path | None, market: str | None, capacity: int | None, price: int | None,
                 max_duration: int, valid: int, heartbeat_every: int | None, claim_every: int, poll: float,
                 ticks: int | None) -> None:
    """Run the provider agent: keep every running lease heartbeated, claim what they accrue and keep
    your capacity offered (a new bid when a bid fills or expires or a lease ends), until Ctrl-C.

    Errors of the node or the matcher are shown with their reason and retried with a backoff; the
    agent keeps going. With --json, one JSON object per event on stdout.
    """
    from underbid.agent.config import load_config, parse_config

    if config_file is not None and market is not None:
        raise click.UsageError("give --config or --market, not both")
    if config_file is not None:
        config = load_config(config_file)
        overrides = {"heartbeat_every": heartbeat_every, "claim_every": claim_every, "poll": poll}
        ctx = click.get_current_context()
        chosen = {name: value for name, value in overrides.items()
                  if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
        config = config.model_copy(update=chosen)
    elif market is not None:
        if capacity is None or price is None:
            raise click.UsageError("--market needs --capacity and --price")
        config = parse_config({"offer": [{"market": market, "capacity": capacity, "price": format_credits(price),
                                          "max_duration": max_duration, "valid": valid}],
                               "heartbeat_every": heartbeat_every, "claim_every": claim_every, "poll": poll},
                              "options")
    else:
        raise click.UsageError("give the offers: --config <file.toml>, or --market with --capacity and --price")
    _run_agent(env, config, ticks)


def _run_agent(env: Env, config, ticks: int | None) -> None:
    import json
    import time

    from underbid.agent.loop import ProviderAgent
    from underbid.client.session import UnderbidError

    client = env.client()
    info = client.provider(client.address)
    if not info.registered:
        raise UnderbidError(f"NotRegistered(provider={client.address}): register first"
                            " (`underbid provider register --metadata <uri>`) and stake")
    matcher_address = _messages.require_bound(env)
    agent = ProviderAgent(client, env.matcher(), env.journal(), config, matcher_address)
    if agent.heartbeat_every >= agent.heartbeat_interval:
        raise click.BadParameter(f"{agent.heartbeat_every} s is not below the protocol's heartbeat interval"
                                 f" ({agent.heartbeat_interval} s): leases would become reportable",
                                 param_hint="--heartbeat-every")
    offers = "; ".join(f"{o.capacity} unit(s) of {market_label(o.market)} at {ubc(o.price)}" for o in config.offers)
    start = {"event": "started", "provider": client.address, "matcher": matcher_address,
             "heartbeat_every": agent.heartbeat_every, "claim_every": config.claim_every,
             "offers": [o.model_dump() for o in config.offers]}
    if env.json:
        click.echo(json.dumps(start))
    else:
        env.console.print(f"provider agent for {client.address}: {offers} UBC/unit-hour; heartbeat every"
                          f" {agent.heartbeat_every} s, claim every {ago(config.claim_every)} (Ctrl-C stops)")
    live = None
    if not env.json and env.console.is_terminal:
        from rich.live import Live

        live = Live(_agent_table(agent), console=env.console, refresh_per_second=2, transient=False)
        live.start()
    done = 0
    try:
        while ticks is None or done < ticks:
            for event in agent.tick():
                if env.json:
                    click.echo(json.dumps(event.as_json()), nl=True)
                elif live is not None:
                    live.console.print(f"[{time.strftime('%H:%M:%S')}] {event.text}")
                else:
                    line = f"[{time.strftime('%H:%M:%S')}] {event.text}"
                    click.echo(line, err=event.kind.value == "error")
            done += 1
            if live is not None:
                live.update(_agent_table(agent))
            if ticks is not None and done >= ticks:
                break
            time.sleep(config.poll)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
    summary = {"event": "stopped", "ticks": done, "claimed": str(agent.status.claimed_total)}
    if env.json:
        click.echo(json.dumps(summary))
    else:
        env.console.print(f"provider agent stopped after {done} pass(es);"
                          f" claimed {ubc(agent.status.claimed_total)} UBC")


def _agent_table(agent) -> Table:
    """The live status: each offer's units, each running lease's next heartbeat, each step's health."""
    status = agent.status
    table = Table(title=f"provider agent · chain time {when(status.now, status.now) if status.now else '…'}",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("what", "state"):
        table.add_column(column)
    for offer in status.offers:
        table.add_row(offer.label, f"{offer.leased} leased, {offer.posted} in {offer.open_bids} open bid(s),"
                      f" {offer.unoffered} unoffered of {offer.offer.capacity}")
    for view in status.leases:
        due = view.heartbeat_due
        state = f"{view.status}, {view.units} unit(s), ends {when(view.end, status.now)}"
        if due is not None:
            state += f", reportable {when(due, status.now)} without a heartbeat"
        table.add_row(f"lease {short(view.id, 6)}", state)
    for step, error in status.errors.items():
        table.add_row(f"[red]{step.value}[/red]", f"[red]failing: {error}[/red]")
    table.add_row("claimed", f"{ubc(status.claimed_total)} UBC since start")
    return table
