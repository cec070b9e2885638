"""Provider commands: `provider register | stake | unstake | withdraw | show`, `bid create | ladder | list | cancel`."""

from __future__ import annotations

import click
from rich.table import Table

from underbid.cli import _messages
from underbid.cli._amounts import STAKE
from underbid.cli._common import PRICE, UBT, DurationType, Env, ago, common_options, hours, kv_table, ubc, ubt_short
from underbid.cli.buyer import MARKET, SDL, SERVICE


@click.group()
def provider() -> None:
    """Providers: register, stake UBT as collateral, unbond and withdraw it."""


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
