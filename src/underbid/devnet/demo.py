"""`underbid demo`: a whole market on a devnet, narrated.

Five providers bind to the matcher and stake; four run the provider agent (`underbid provider
run`'s loop), which bids their capacity and heartbeats their leases, and one bids by hand and goes
silent. Each market has more capacity offered than bought, so a losing bid sets its price. Three
buyers mint credits, bind, deposit and order, a round clears at one uniform price per market (each
explained by the rule that set it), time advances while the agents heartbeat, providers claim,
the silent provider is reported and slashed, a buyer closes early and is refunded (the providers'
next heartbeats skip the closed leases), and credits are withdrawn from escrow through the notice
period and redeemed. It ends with every balance before and after and checks that credits and UBT
are conserved; a violation raises `ConservationError`.

The demo drives the same library the CLI commands use (`underbid.client.session`).
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from underbid.agent.config import AgentConfig, Offer
from underbid.agent.loop import AgentEvent, EventKind, ProviderAgent
from underbid.client.session import Client, Journal, MatcherClient, UnderbidError
from underbid.devnet.node import BUYERS, DEPLOYER, PROVIDERS, REPORTER, advance, dev_account, repost_oracle_price
from underbid.protocol.eip712 import Bid, Order
from underbid.protocol.markets import canonical_spec, market_id
from underbid.protocol.pricing import explain_price
from underbid.protocol.units import format_credits

UBT = 10**18
UBC = 10**6
H100 = canonical_spec("gpu=nvidia-h100;vram=80;gpus=1;region=us-east")
A100 = canonical_spec("gpu=nvidia-a100;vram=80;gpus=1;region=eu-west")
MARKET_NAMES = {market_id(H100): "H100 us-east", market_id(A100): "A100 eu-west"}


class ConservationError(UnderbidError):
    """Credits or UBT were created or lost."""


@dataclass(frozen=True)
class ProviderPlan:
    name: str
    index: int
    market: str
    capacity: int
    price: str  # UBC per unit-hour
    stake_units: int
    misses_heartbeats: bool = False


@dataclass(frozen=True)
class BuyerPlan:
    name: str
    index: int
    market: str
    units: int
    hours: int
    max_price: str
    mint_ubt: int
    deposit: int  # UBC
    closes_early: bool = False


# Both markets have a bid left unused that the buyers could have taken: its price is the market's
# (the cheapest bid left unused), below every winning buyer's max, so no buyer pays its max.
PROVIDER_PLANS = (
    ProviderPlan("provider-1", PROVIDERS[0], H100, 3, "2.10", 4),
    ProviderPlan("provider-2", PROVIDERS[1], H100, 2, "2.35", 3, misses_heartbeats=True),
    ProviderPlan("provider-3", PROVIDERS[2], H100, 4, "2.50", 4),
    ProviderPlan("provider-4", PROVIDERS[3], A100, 3, "1.20", 3),
    ProviderPlan("provider-5", PROVIDERS[4], A100, 3, "1.45", 3),
)
#: the agents bid for hours at a time and leave claims to the demo's own stage (which narrates them)
AGENT_BID_VALID = 2 * 3600
AGENT_CLAIM_EVERY = 365 * 86400
BUYER_PLANS = (
    BuyerPlan("buyer-1", BUYERS[0], H100, 3, 8, "2.60", 50, 80),
    BuyerPlan("buyer-2", BUYERS[1], H100, 2, 4, "3.00", 30, 40),
    BuyerPlan("buyer-3", BUYERS[2], A100, 3, 6, "1.60", 30, 40, closes_early=True),
)
STAGES = (
    "Set the stage: fund the actors, post a fresh oracle price",
    "Providers bind to the matcher, register and stake UBT",
    "Providers bid in two markets (four through the provider agent)",
    "Buyers burn UBT for credits, bind, deposit and order",
    "The matcher closes the round",
    "Time passes; providers heartbeat",
    "A missed heartbeat is reported and slashed",
    "Providers claim what accrued",
    "A buyer closes early and is refunded; heartbeats skip the closed leases",
    "Escrow is withdrawn after the notice; credits are redeemed for UBT",
    "Balances and conservation",
)


def _price(text: str) -> int:
    return int(Decimal(text) * UBC)


def _ubt(wei: int, places: int = 2) -> str:
    sign = "-" if wei < 0 else ""
    return f"{sign}{Decimal(abs(wei)).scaleb(-18):,.{places}f}"


def _ubc(base: int) -> str:
    sign = "-" if base < 0 else ""
    return f"{sign}{Decimal(abs(base)).scaleb(-6):,.2f}"


@dataclass
class Snapshot:
    ubt: int
    credits: int
    escrow_free: int
    escrow_locked: int
    stake: int


@dataclass
class DemoResult:
    seconds: float = 0.0
    prices: dict[str, int] = field(default_factory=dict)
    #: market -> the rule that set its price, and the price with its reason for people
    price_rules: dict[str, str] = field(default_factory=dict)
    price_reasons: dict[str, str] = field(default_factory=dict)
    round_id: int | None = None
    leases: list[dict[str, Any]] = field(default_factory=list)
    fault: dict[str, Any] | None = None
    claims: dict[str, int] = field(default_factory=dict)
    early_close: list[dict[str, Any]] = field(default_factory=list)
    skipped_heartbeats: list[dict[str, str]] = field(default_factory=list)
    redemptions: dict[str, int] = field(default_factory=dict)
    balances: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def conserved(self) -> bool:
        return all(c["ok"] for c in self.checks.values())


class Demo:
    def __init__(self, client: Client, matcher: MatcherClient, admin_token: str, *, minutes: int = 20,
                 console: Console | None = None, quiet: bool = False):
        self.base = client.with_account(None)
        self.matcher = matcher
        self.admin_token = admin_token
        self.minutes = minutes
        self.console = console or Console(highlight=False)
        self.quiet = quiet
        self.result = DemoResult()
        self.actors: dict[str, Client] = {"deployer": self.base.with_account(dev_account(DEPLOYER))}
        for p in PROVIDER_PLANS:
            self.actors[p.name] = self.base.with_account(dev_account(p.index))
        for b in BUYER_PLANS:
            self.actors[b.name] = self.base.with_account(dev_account(b.index))
        self.actors["reporter"] = self.base.with_account(dev_account(REPORTER))
        #: provider name -> its agent (the honest providers), made once the matcher's address is known
        self.agents: dict[str, ProviderAgent] = {}
        self._journal_dir = tempfile.TemporaryDirectory(prefix="underbid-demo-")
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    # ----- narration -----

    def say(self, text: str) -> None:
        if not self.quiet:
            (self._progress.console if self._progress else self.console).print(text)

    def show(self, renderable) -> None:
        if not self.quiet:
            (self._progress.console if self._progress else self.console).print(renderable)

    def _on_tx(self, what: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._stage_task, description=f"  [dim]{what}[/]")

    # ----- the story -----

    def run(self) -> DemoResult:
        started = time.perf_counter()
        health = self.matcher.health()  # fail early, before any transaction, if the matcher is down
        if not health.get("matcher"):
            raise UnderbidError(f"the matcher at {self.matcher.url} does not report its address (GET /health)")
        #: the matcher every order and bid names, and every account binds to
        self.matcher_address = self.base.w3.to_checksum_address(health["matcher"])
        for actor in self.actors.values():
            actor.on_tx = self._on_tx
        steps = (self.stage_setup, self.stage_stake, self.stage_bid, self.stage_order, self.stage_round,
                 self.stage_time, self.stage_fault, self.stage_claim, self.stage_close, self.stage_redeem,
                 self.stage_balances)
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with self._journal_dir, Progress(*columns, console=self.console, transient=True,
                                         disable=self.quiet) as progress:
            self._progress = progress
            self._task = task = progress.add_task("demo", total=len(steps))
            self._stage_task = progress.add_task("", total=None)
            for number, (title, step) in enumerate(zip(STAGES, steps, strict=True), start=1):
                progress.update(task, description=f"[bold]{number}/{len(steps)} {title}")
                self.say(f"\n[bold cyan]{number}. {title}[/]")
                step()
                progress.advance(task)
            self._progress = None
        self.result.seconds = time.perf_counter() - started
        return self.result

    def stage_setup(self) -> None:
        deployer = self.actors["deployer"]
        self.snapshot_before = self.snapshot()
        repost_oracle_price(deployer)
        need = {p.name: p.stake_units * deployer.stake_per_unit for p in PROVIDER_PLANS}
        need.update({b.name: b.mint_ubt * UBT for b in BUYER_PLANS})
        funded = []
        for name, amount in need.items():
            actor = self.actors[name]
            have = actor.ubt_balance(actor.address)
            if have < amount:
                deployer.transact(deployer.ubt.functions.transfer(actor.address, amount - have), f"fund {name}")
                funded.append(name)
        state = deployer.bme_state()
        self.say(f"oracle: 1 UBT = {state['price_usd']} USD (re-posted by the updater); stake per unit"
                 f" {_ubt(deployer.stake_per_unit, 0)} UBT; heartbeat every {deployer.params()['heartbeatInterval']} s")
        if funded:
            self.say(f"the deployer topped up {', '.join(funded)} with UBT")

    def _bind(self, name: str) -> str:
        """Binds actor `name` to the matcher if it is unbound; returns a few words for the narration."""
        bound = self.actors[name].ensure_bound(self.matcher_address)
        return "bound to the matcher, " if bound else ""

    def stage_stake(self) -> None:
        self.say(f"the matcher is {self.matcher_address}: each account binds to it (only it may settle the"
                 " account's orders and bids; moving to another matcher would take the notice period)")
        for p in PROVIDER_PLANS:
            actor = self.actors[p.name]
            bound = self._bind(p.name)
            if not actor.provider(actor.address).registered:
                actor.register(f"https://{p.name}.underbid.example/meta.json")
            amount = p.stake_units * actor.stake_per_unit
            actor.stake(amount)
            self.say(f"{p.name} {bound}registered and staked {_ubt(amount, 0)} UBT (covers {p.stake_units} units)")

    def _tick(self, name: str) -> list[AgentEvent]:
        """One pass of provider `name`'s agent; its events are narrated, an error stops the demo."""
        events = self.agents[name].tick()
        for event in events:
            if event.kind is EventKind.ERROR:
                raise UnderbidError(f"{name}'s agent: {event.text}")
            if event.kind in (EventKind.BID, EventKind.SKIPPED, EventKind.LEASE_ENDED, EventKind.STAKE_SHORT):
                self.say(f"{name}'s agent: {event.text}")
        return events

    def stage_bid(self) -> None:
        table = Table("provider", "market", "capacity", "price (UBC/unit-hour)", "digest", title="sealed bids")
        self.bids: dict[str, str] = {}
        journal = Journal(Path(self._journal_dir.name) / "messages.jsonl")
        for p in PROVIDER_PLANS:
            actor = self.actors[p.name]
            if not p.misses_heartbeats:
                # The agent offers the provider's capacity itself (its first pass posts the bid).
                # As a config file states it: the price in credits, as a string.
                offer = Offer.model_validate({"market": p.market, "capacity": p.capacity, "price": p.price,
                                              "valid": AGENT_BID_VALID})
                config = AgentConfig(offer=(offer,), claim_every=AGENT_CLAIM_EVERY)
                self.agents[p.name] = ProviderAgent(actor, self.matcher, journal, config, self.matcher_address)
                [posted] = [e for e in self._tick(p.name) if e.kind is EventKind.BID]
                digest = str(posted.data["digest"])
                self.bids[digest] = p.name
                table.add_row(f"{p.name} (agent)", MARKET_NAMES[market_id(p.market)], str(p.capacity), p.price,
                              digest[:12] + "…")
                continue
            bid = Bid(
                provider=actor.address,
                matcher=self.matcher_address,
                market=market_id(p.market),
                capacity=p.capacity,
                price=_price(p.price),
                max_duration=24 * 3600,
                deadline=actor.block_time() + 2 * 3600,
                nonce=secrets.randbits(64),
            )
            ack = self.matcher.post_bid(bid, actor.sign(bid), p.market)
            self.bids[ack["digest"]] = p.name
            table.add_row(p.name, MARKET_NAMES[bid.market], str(p.capacity), p.price, ack["digest"][:12] + "…")
        self.show(table)

    def stage_order(self) -> None:
        table = Table("buyer", "burned UBT", "minted UBC", "deposited", "market", "units", "hours", "max price",
                      title="orders")
        for b in BUYER_PLANS:
            actor = self.actors[b.name]
            minted = actor.mint_credits(b.mint_ubt * UBT)
            self._bind(b.name)
            actor.deposit(b.deposit * UBC)
            order = Order(
                buyer=actor.address,
                matcher=self.matcher_address,
                market=market_id(b.market),
                units=b.units,
                duration=b.hours * 3600,
                max_price=_price(b.max_price),
                deadline=actor.block_time() + 2 * 3600,
                nonce=secrets.randbits(64),
            )
            self.matcher.post_order(order, actor.sign(order), b.market)
            table.add_row(b.name, _ubt(minted["ubt_burned"], 0), _ubc(minted["credits_minted"]), _ubc(b.deposit * UBC),
                          MARKET_NAMES[order.market], str(b.units), str(b.hours), b.max_price)
        self.show(table)
        self.say("each buyer bound to the matcher before depositing; orders last at least"
                 f" {self.base.min_lease_duration} s (the protocol's minimum lease)")

    def stage_round(self) -> None:
        report = self.matcher.close_round(self.admin_token)
        if not report.get("matches"):
            raise UnderbidError(f"the round cleared no matches: {report}")
        self.result.round_id = report["round_id"]
        self.result.prices = {m: int(p) for m, p in (report.get("prices") or {}).items()}
        self.result.price_rules = dict(report.get("price_rules") or {})
        self.result.price_reasons = {m: explain_price(p, self.result.price_rules.get(m))
                                     for m, p in self.result.prices.items()}
        prices = ", ".join(f"{MARKET_NAMES.get(m, m[:10])} at [bold]{format_credits(p)} UBC[/]/unit-hour"
                           for m, p in self.result.prices.items())
        self.say(f"round {report['round_id']}: {report['matches']} matches, gas {report['gas_used']:,};"
                 f" uniform prices: {prices}")
        for market, reason in self.result.price_reasons.items():
            self.say(f"  why {MARKET_NAMES.get(market, market[:10])} cleared there: {reason}")
        for market, price in self.result.prices.items():
            on_chain = self.base.settlement.functions.clearingPrice(
                self.matcher_address, report["round_id"], bytes.fromhex(market[2:])).call()
            if on_chain != price:
                raise UnderbidError(f"clearing price on chain {on_chain} differs from the matcher's {price}")
        self.leases = [v for v in self.base.leases(include_closed=False)
                       if v.round == report["round_id"] and v.matcher == self.matcher_address]
        names: dict[str, str] = {a.address: n for n, a in self.actors.items()}
        table = Table(
            "lease", "buyer", "provider", "market", "units", "price", "hours", "locked cost", title="leases opened"
        )
        for v in self.leases:
            table.add_row(v.id[:12] + "…", names.get(v.buyer, v.buyer), names.get(v.provider, v.provider),
                          MARKET_NAMES.get(v.market, v.market[:10]), str(v.units), _ubc(v.price),
                          str((v.end - v.start) // 3600), _ubc(v.cost))
            self.result.leases.append(
                {**v.as_json(), "buyer_name": names.get(v.buyer), "provider_name": names.get(v.provider)}
            )
        self.show(table)

    def stage_time(self) -> None:
        interval = self.base.params()["heartbeatInterval"]
        step = max(interval - 5, 1)
        steps = max(self.minutes * 60 // step, 3)
        faulty = {p.name for p in PROVIDER_PLANS if p.misses_heartbeats}
        by_provider: dict[str, list[str]] = {}
        names: dict[str, str] = {a.address: n for n, a in self.actors.items()}
        for v in self.leases:
            by_provider.setdefault(names[v.provider], []).append(v.id)
        progress = self._progress
        clock = progress.add_task("  chain time", total=steps) if progress is not None else None
        for i in range(steps):
            advance(self.base, step, repost_price=False)
            for name, ids in by_provider.items():
                if name in self.agents:
                    self._tick(name)  # the agent heartbeats every running lease once half the interval passed
                elif i < 1:  # the silent provider's machine went dark after its first heartbeat
                    self.actors[name].heartbeat(ids)
            if progress is not None and clock is not None:
                progress.update(clock, completed=i + 1, description=f"  chain time +{(i + 1) * step // 60} min")
        if progress is not None and clock is not None:
            progress.remove_task(clock)
        self.say(f"{steps * step // 60} minutes of chain time passed in {steps} steps of {step} s;"
                 f" the agents of {', '.join(sorted(set(by_provider) - faulty))} heartbeat every step,"
                 f" {', '.join(sorted(faulty & set(by_provider))) or 'nobody'} went silent")
        self.show(self._live_leases("leases now"))

    def _live_leases(self, title: str) -> Table:
        names: dict[str, str] = {a.address: n for n, a in self.actors.items()}
        table = Table("lease", "buyer", "provider", "accrued", "claimable", "locked left", "status", title=title)
        for v in self.base.leases():
            if v.round != self.result.round_id or v.matcher != self.matcher_address:
                continue
            table.add_row(v.id[:12] + "…", names.get(v.buyer, "?"), names.get(v.provider, "?"), _ubc(v.accrued),
                          _ubc(v.claimable), _ubc(v.remaining), v.status)
        return table

    def stage_fault(self) -> None:
        reporter = self.actors["reporter"]
        faulty = [v for v in reporter.leases(include_closed=False)
                  if v.status == "faulty" and v.round == self.result.round_id and v.matcher == self.matcher_address]
        if not faulty:
            self.say("no lease is reportable (the silent provider won no lease)")
            return
        total: dict[str, Any] = {
            "slashed": 0, "to_buyer": 0, "to_reporter": 0, "burned": 0, "buyer_refund": 0, "leases": []
        }
        for v in faulty:
            outcome = reporter.report(v.id)
            for key in ("slashed", "to_buyer", "to_reporter", "burned", "buyer_refund"):
                total[key] += outcome[key]
            total["leases"].append(v.id)
        self.result.fault = total
        self.say(f"the reporter reported {len(faulty)} lease(s): {_ubt(total['slashed'])} UBT slashed —"
                 f" {_ubt(total['to_buyer'])} to the buyer, {_ubt(total['to_reporter'])} to the reporter,"
                 f" {_ubt(total['burned'])} burned; the buyer got {_ubc(total['buyer_refund'])} UBC back in escrow")

    def stage_claim(self) -> None:
        for p in PROVIDER_PLANS:
            actor = self.actors[p.name]
            mine = [v for v in actor.leases(provider=actor.address, include_closed=False)
                    if v.claimable and v.status in ("running", "ended")]
            if not mine:
                continue
            outcome = actor.claim([v.id for v in mine])
            self.result.claims[p.name] = outcome["claimed"]
            self.say(f"{p.name} claimed {_ubc(outcome['claimed'])} UBC from {len(mine)} lease(s)")

    def stage_close(self) -> None:
        # One more heartbeat interval passes, so the early close pays the provider what accrued since its claim.
        interval = self.base.params()["heartbeatInterval"]
        advance(self.base, max(interval - 5, 1), repost_price=False)
        for name in self.agents:
            self._tick(name)
        for b in BUYER_PLANS:
            if not b.closes_early:
                continue
            actor = self.actors[b.name]
            for v in actor.leases(buyer=actor.address, include_closed=False):
                if v.status != "running":
                    continue
                outcome = actor.close(v.id)
                self.result.early_close.append(outcome)
                self.say(f"{b.name} closed lease {v.id[:12]}… early: provider paid {_ubc(outcome['paid_to_provider'])}"
                         f" UBC, buyer refunded {_ubc(outcome['refunded'])} UBC")
        # The providers' heartbeat batches still list the closed leases (their machines have not heard
        # yet): the contract skips those and keeps the batch, so no buyer can make a heartbeat fail.
        closed = {c["lease"] for c in self.result.early_close}
        names: dict[str, str] = {a.address: n for n, a in self.actors.items()}
        for name in sorted({names[v.provider] for v in self.leases if v.id in closed and v.provider in names}):
            actor = self.actors[name]
            ids = [v.id for v in self.leases if v.provider == actor.address]
            beat = actor.heartbeat(ids)
            self.result.skipped_heartbeats.extend(beat["skipped"])
            self.say(f"{name} heartbeat {len(ids)} lease(s) in one batch: {len(beat['leases'])} beat, "
                     + ", ".join(f"{s['lease'][:12]}… skipped ({s['reason']})" for s in beat["skipped"]))

    def stage_redeem(self) -> None:
        redeemers = [p.name for p in PROVIDER_PLANS] + [b.name for b in BUYER_PLANS if b.closes_early]
        announced = []
        for name in redeemers:
            actor = self.actors[name]
            free, _ = actor.escrow(actor.address)
            if free:
                actor.request_withdrawal(free)
                announced.append(name)
        if announced:
            notice = self.base.notice_period
            self.say(f"{', '.join(announced)} announced escrow withdrawals: they can complete after the"
                     f" {notice} s notice (meanwhile the credits stay free for the matcher's batches in flight)")
            # anvil lets the demo skip the wait: evm_increaseTime + evm_mine move the chain clock.
            advance(self.base, notice, repost_price=False)
            self.say(
                f"the devnet's clock moved {notice} s forward (anvil evm_increaseTime + evm_mine): the notice is over"
            )
            for name in announced:
                outcome = self.actors[name].complete_withdrawal()
                self.say(f"{name} withdrew {_ubc(outcome['withdrawn'])} UBC from escrow")
        repost_oracle_price(self.actors["deployer"])
        for name in redeemers:
            actor = self.actors[name]
            balance = actor.credit_balance(actor.address)
            if not balance:
                continue
            outcome = actor.redeem(balance)
            self.result.redemptions[name] = outcome["ubt_minted"]
            self.say(f"{name} redeemed {_ubc(balance)} UBC for {_ubt(outcome['ubt_minted'], 4)} UBT")

    def stage_balances(self) -> None:
        after = self.snapshot()
        before = self.snapshot_before
        table = Table("account", "UBT", "Δ UBT", "credits", "escrow free", "escrow locked", "stake", "Δ stake",
                      title="balances before → after")
        for name in self.actors:
            b, a = before[name], after[name]
            self.result.balances[name] = {"before": b.__dict__, "after": a.__dict__}
            table.add_row(name, f"{_ubt(b.ubt)} → {_ubt(a.ubt)}", _ubt(a.ubt - b.ubt),
                          f"{_ubc(b.credits)} → {_ubc(a.credits)}", f"{_ubc(b.escrow_free)} → {_ubc(a.escrow_free)}",
                          f"{_ubc(b.escrow_locked)} → {_ubc(a.escrow_locked)}", f"{_ubt(b.stake)} → {_ubt(a.stake)}",
                          _ubt(a.stake - b.stake))
        self.show(table)
        self.result.checks = conservation(self.base)
        checks = Table("check", "left side", "right side", "result", title="conservation")
        for name, c in self.result.checks.items():
            checks.add_row(name, c["left"], c["right"], "[green]ok[/]" if c["ok"] else "[red bold]VIOLATED[/]")
        self.show(checks)
        state = self.base.bme_state()
        self.say(f"BME: {_ubt(state['total_ubt_burned'])} UBT burned for credits, {_ubt(state['total_ubt_minted'])} UBT"
                 f" minted by redemptions, {_ubt(state['total_slashed_burned'])} UBT burned by slashing")

    # ----- accounting -----

    def snapshot(self) -> dict[str, Snapshot]:
        shots = {}
        for name, actor in self.actors.items():
            address = actor.address
            free, locked = actor.escrow(address)
            p = actor.provider(address)
            shots[name] = Snapshot(actor.ubt_balance(address), actor.credit_balance(address), free, locked,
                                   p.staked)  # `staked` includes what is unbonding until it is withdrawn
        return shots


def conservation(client: Client) -> dict[str, dict[str, Any]]:
    """The protocol's conservation laws, checked on chain over every account that ever held credits or stake."""
    s, bme = client.settlement, client.bme
    start = client.book.block
    holders: set[str] = set()
    buyers: set[str] = set()
    providers: set[str] = set()
    for log in bme.events.CreditsMinted.get_logs(from_block=start):
        holders.add(log["args"]["account"])
    for log in s.events.Deposited.get_logs(from_block=start):
        buyers.add(log["args"]["buyer"])
    # Lease payments are the credit's Transfers from the settlement (they have no settlement event).
    settlement_address = client.book.address("UnderbidSettlement")
    for log in client.credit.events.Transfer.get_logs(from_block=start, argument_filters={"from": settlement_address}):
        holders.add(log["args"]["to"])
    for log in s.events.Staked.get_logs(from_block=start):
        providers.add(log["args"]["provider"])
    holders |= buyers
    credit_supply = client.credit.functions.totalSupply().call()
    wallets = sum(client.credit_balance(h) for h in holders)
    escrow = sum(sum(client.escrow(b)) for b in buyers)
    escrow_held = client.credit_balance(settlement_address)
    # A lease's whole cost stays in its buyer's `locked` until the lease closes, so what open
    # leases have already paid their providers is counted there and in the providers' wallets.
    paid_open = 0
    for log in s.events.LeaseOpened.get_logs(from_block=start):
        _, l_start, _, closed, _, _, units, price, paid_until, _ = s.functions.getLease(log["args"]["leaseId"]).call()
        if not closed:
            paid_open += units * price * ((paid_until or l_start) - l_start) // 3600
    ubt_supply = client.ubt.functions.totalSupply().call()
    genesis = int(client.book.params.get("genesis_supply", 0))
    minted, burned = bme.functions.totalUbtMinted().call(), bme.functions.totalUbtBurned().call()
    slashed_burned = s.functions.totalSlashedBurned().call()
    stake = sum(client.provider(a).staked for a in providers)  # includes unbonding until withdrawn
    stake_held = client.ubt_balance(client.book.address("UnderbidSettlement"))
    bonds, bonds_text = 0, ""
    if hasattr(s.events, "MatcherBonded") and any(e.get("name") == "matchers" for e in s.abi):
        bonded = {log["args"]["matcher"] for log in s.events.MatcherBonded.get_logs(from_block=start)}
        bonds = sum(s.functions.matchers(m).call()[0] for m in bonded)
        bonds_text = " + matcher bonds"

    def check(left: int, right: int, fmt: Callable[[int], str], left_text: str, right_text: str) -> dict[str, Any]:
        return {"ok": left == right, "left": f"{left_text} = {fmt(left)}", "right": f"{right_text} = {fmt(right)}",
                "left_value": left, "right_value": right}

    return {
        "credits": check(credit_supply, wallets + escrow - paid_open, _ubc, "credit supply",
                         "wallets + escrow (free + locked) − paid on open leases"),
        "escrow backed": check(escrow_held, escrow - paid_open, _ubc, "credits held by settlement",
                               "escrow (free + locked) − paid on open leases"),
        "UBT": check(ubt_supply, genesis + minted - burned - slashed_burned, _ubt, "UBT supply",
                     "genesis + BME minted − BME burned − slash burned"),
        "stake backed": check(stake_held, stake + bonds, _ubt, "UBT held by settlement",
                              f"stake (staked, unbonding included){bonds_text}"),
    }


def run_demo(client: Client, matcher: MatcherClient, admin_token: str, *, minutes: int = 20,
             console: Console | None = None, quiet: bool = False) -> DemoResult:
    """Runs the story; raises ConservationError if a conservation law fails."""
    result = Demo(client, matcher, admin_token, minutes=minutes, console=console, quiet=quiet).run()
    if not result.conserved:
        failed = ", ".join(name for name, c in result.checks.items() if not c["ok"])
        raise ConservationError(f"conservation violated: {failed} (see the table above)")
    return result
