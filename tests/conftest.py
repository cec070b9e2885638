"""Shared fixtures: a real anvil (ape-foundry), the real compiled contracts, real signatures.

Ape reverts the chain to a snapshot after every test, so each test starts from the deployment
plus whatever the session fixtures set up.
"""

from __future__ import annotations

import importlib.metadata
import itertools
from dataclasses import dataclass

import pytest

from underbid.devnet.deploy import DeployParams, deploy_protocol
from underbid.protocol.eip712 import Bid, Domain, Order
from underbid.protocol.markets import market_id


def _quiet_reverts() -> None:
    """ape-foundry 0.8.12 prints the call tree of every revert it decodes (`trace.show()`, to stdout,
    which pytest captures and shows only for a failed test): a debug trace from anvil, decoded and
    enriched, about a second per revert, and the suite expects hundreds of reverts. This is its
    `_handle_execution_reverted` without that print: the error it returns, and everything tests
    check on it, is the same. Another ape-foundry version keeps its own."""
    from ape.exceptions import ContractLogicError, TransactionError
    from ape_foundry.provider import FoundryProvider

    if importlib.metadata.version("ape-foundry") != "0.8.12":
        return

    def _handle_execution_reverted(self, exception, revert_message=None, **kwargs):
        if revert_message == "0x":
            revert_message = TransactionError.DEFAULT_MESSAGE
        else:
            revert_message = revert_message or TransactionError.DEFAULT_MESSAGE
        if revert_message.startswith("revert: "):
            revert_message = revert_message[8:]
        sub_err = ContractLogicError(base_err=exception, revert_message=revert_message, **kwargs)
        return self.compiler_manager.enrich_error(sub_err)

    FoundryProvider._handle_execution_reverted = _handle_execution_reverted


_quiet_reverts()

UBT = 10**18
UBC = 10**6
HOUR = 3600
H100 = market_id("gpu=nvidia-h100;vram=80;gpus=8;region=us-east")
A100 = market_id("gpu=nvidia-a100;vram=80;gpus=8;region=eu-west")


@pytest.fixture(scope="session")
def params() -> DeployParams:
    return DeployParams()


@pytest.fixture(scope="session")
def deployer(accounts):
    return accounts[0]


@pytest.fixture(scope="session")
def matcher(accounts):
    return accounts[1]


@pytest.fixture(scope="session")
def buyers(accounts):
    return [accounts[2], accounts[3], accounts[4]]


@pytest.fixture(scope="session")
def providers(accounts):
    return [accounts[5], accounts[6], accounts[7], accounts[8]]


@pytest.fixture(scope="session")
def outsider(accounts):
    return accounts[9]


@pytest.fixture(scope="session")
def protocol(deployer, matcher, params):
    return deploy_protocol(deployer, [matcher], params)


@pytest.fixture(scope="session")
def ubt(protocol):
    return protocol.ubt


@pytest.fixture(scope="session")
def credit(protocol):
    return protocol.credit


@pytest.fixture(scope="session")
def oracle(protocol):
    return protocol.oracle


@pytest.fixture(scope="session")
def bme(protocol):
    return protocol.bme


@pytest.fixture(scope="session")
def settlement(protocol):
    return protocol.settlement


@pytest.fixture(scope="session")
def court(protocol):
    return protocol.court


@pytest.fixture(scope="session")
def timelock(protocol):
    return protocol.timelock


@pytest.fixture
def governed_by_deployer(deployer, timelock, bme, oracle, chain, params):
    """Hands the deployer the BME's and the oracle's admin role through the timelock.

    For the tests of those parameters' own rules: the deployment gives the role to the timelock
    alone. The delay makes the seeded price stale, so it is posted again.
    """
    from tests.governance import through_timelock

    for contract in (bme, oracle):
        role = contract.DEFAULT_ADMIN_ROLE()
        through_timelock(
            timelock, chain, contract, "grantRole", role, deployer, sender=deployer, delay=params.admin_delay
        )
    oracle.setPrice(params.ubt_price, sender=deployer)
    return deployer


@pytest.fixture(scope="session")
def domain(chain, settlement) -> Domain:
    return Domain(chain_id=chain.chain_id, verifying_contract=str(settlement.address))


_nonces = itertools.count(1)


@dataclass
class Market:
    """Helpers that act as buyers, providers and the matcher against the deployed contracts."""

    chain: object
    deployer: object
    matcher: object
    ubt: object
    credit: object
    bme: object
    settlement: object
    domain: Domain
    params: DeployParams

    def give_ubt(self, account, amount: int) -> None:
        self.ubt.transfer(account, amount, sender=self.deployer)

    def mint_credits(self, account, credits: int) -> int:
        """Mints at least `credits` credit base units for `account` by burning UBT."""
        price = self.params.ubt_price
        spread = self.params.mint_spread_bps
        ubt_in = -(-credits * 10**20 * 10_000 // (price * (10_000 - spread)))  # ceil
        self.give_ubt(account, ubt_in)
        self.ubt.approve(self.bme, ubt_in, sender=account)
        receipt = self.bme.mintCredits(ubt_in, credits, sender=account)
        return receipt.return_value

    def bind(self, account, matcher=None) -> None:
        """Binds an unbound `account` to `matcher` (default: the test matcher) at once."""
        matcher = matcher or self.matcher
        if self.settlement.boundMatcherOf(account) != matcher.address:
            self.settlement.bindMatcher(matcher, sender=account)

    def fund_buyer(self, buyer, credits: int, matcher=None) -> None:
        """Deposits `credits` for `buyer` and binds it to `matcher` (default: the test matcher) if unbound."""
        self.mint_credits(buyer, credits)
        self.settlement.deposit(credits, sender=buyer)
        self.bind(buyer, matcher)

    def stake_provider(self, provider, units: int, matcher=None) -> None:
        """Stakes `units` of collateral for `provider` and binds it to `matcher` (default: the test matcher)
        if unbound."""
        amount = units * self.params.stake_per_unit
        self.give_ubt(provider, amount)
        if not self.settlement.providers(provider).registered:
            self.settlement.register(f"https://{str(provider.address)[:10].lower()}.example/meta.json", sender=provider)
        self.ubt.approve(self.settlement, amount, sender=provider)
        self.settlement.stake(amount, sender=provider)
        self.bind(provider, matcher)

    def now(self) -> int:
        return self.chain.pending_timestamp

    def order(self, buyer, **fields) -> tuple[Order, bytes]:
        values = dict(
            buyer=str(buyer.address), matcher=str(self.matcher.address), market=H100, units=2, duration=2 * HOUR,
            max_price=3 * UBC, deadline=self.now() + HOUR, nonce=next(_nonces),
        )
        values.update(fields)
        order = Order(**values)
        return order, order.sign(buyer.private_key, self.domain)

    def bid(self, provider, **fields) -> tuple[Bid, bytes]:
        values = dict(
            provider=str(provider.address), matcher=str(self.matcher.address), market=H100, capacity=4,
            price=2 * UBC, max_duration=24 * HOUR, deadline=self.now() + HOUR, nonce=next(_nonces),
        )
        values.update(fields)
        bid = Bid(**values)
        return bid, bid.sign(provider.private_key, self.domain)

    def next_round(self, matcher=None) -> int:
        """A round id above every round the matcher used so far."""
        return self.settlement.lastRound(matcher or self.matcher) + 1

    def settle(
        self, orders, bids, matches, prices, *, round_id: int | None = None, batch: int = 0, final: bool = True,
        deadline: int | None = None, sender=None,
    ):
        """Calls `settle`. `orders`/`bids` are (message, signature) pairs; `prices` maps market to price.

        By default it opens the matcher's next round in one final batch, with a deadline half a
        notice period ahead.
        """
        sender = sender or self.matcher
        if round_id is None:
            round_id = self.next_round(sender) if batch == 0 else self.settlement.lastRound(sender)
        if deadline is None:
            deadline = self.now() + self.params.notice_period // 2
        return self.settlement.settle(
            (round_id, batch, final, deadline),
            [o.as_call_tuple() for o, _ in orders],
            [s for _, s in orders],
            [b.as_call_tuple() for b, _ in bids],
            [s for _, s in bids],
            list(matches),
            [(m, p) for m, p in prices.items()],
            sender=sender,
        )

    def lease_ids(self, receipt) -> list[bytes]:
        return [log.leaseId for log in receipt.decode_logs(self.settlement.LeaseOpened)]


@pytest.fixture(scope="session")
def market(chain, deployer, matcher, ubt, credit, bme, settlement, domain, params) -> Market:
    return Market(chain, deployer, matcher, ubt, credit, bme, settlement, domain, params)


#: The slowest test files, slowest first (about 50-110 s each on the CI machine, Dec 2026): they
#: run first, so that the two pytest-xdist workers of scripts/test.sh (--dist loadfile
#: --no-loadscope-reorder: whole files, in this order) end together on the short files instead
#: of one waiting while the other runs a long file that came last. Only the order depends on it.
SLOWEST_FIRST = (
    "tests/contracts/test_invariants.py",
    "tests/matcher/test_schema.py",
    "tests/matcher/test_api_errors.py",
    "tests/cli/test_journeys.py",
    "tests/matcher/test_crash.py",
    "tests/test_clearing.py",
    "tests/matcher/test_stalled_node.py",
    "tests/cli/test_remote_chain.py",
    "tests/matcher/test_faults.py",
    "tests/matcher/test_failover.py",
    "tests/cli/test_demo.py",
    "tests/matcher/test_accountability.py",
    "tests/contracts/test_challenge.py",
)


def pytest_collection_modifyitems(session, config, items):
    # The slowest files first (SLOWEST_FIRST), then the others in their usual order. (A stable
    # sort: each file's tests stay together, in their own order.)
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        first.setdefault(item.nodeid.split("::")[0], index)

    def key(item) -> tuple[int, int]:
        path = item.nodeid.split("::")[0]
        return rank.get(path, len(SLOWEST_FIRST)), first[path]

    items.sort(key=key)


@pytest.fixture
def funded(market, buyers, providers) -> Market:
    """Every buyer holds 1,000 UBC of free escrow and every provider 8 units of stake.

    NOTE: function-scoped on purpose: ape does not roll back module-scoped fixture state when the
    module ends, so a module-scoped version leaks stake into the next test files. (A module-scoped
    funding with its own snapshot was tried: it saved ~2 minutes of test time but failed two
    challenge-window tests by 2 s in a whole-suite run only, through ape's fixture "rebase".)
    """
    for buyer in buyers:
        market.fund_buyer(buyer, 1_000 * UBC)
    for provider in providers:
        market.stake_provider(provider, 8)
    return market


# ----- a throwaway PostgreSQL (tests/postgres.py): one cluster per worker, a fresh database per test -----


@pytest.fixture(scope="session")
def postgres_cluster():
    """A private PostgreSQL cluster for this pytest worker, started on first use, deleted at the end."""
    from tests.postgres import postgres_cluster

    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster) -> str:
    """The URL of a fresh, empty database in this worker's cluster (`postgresql://…`)."""
    return postgres_cluster.create_database()


# ----- the gas report: lines printed at the end of the run and compared with gas-snapshots/ -----

GAS_LINES: list[str] = []


def pytest_sessionfinish(session):
    # Under pytest-xdist (scripts/test.sh runs the suite on several workers) each worker's lines
    # travel to the controller with the worker's output, and the controller prints them.
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["gas_lines"] = list(GAS_LINES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    GAS_LINES.extend(getattr(node, "workeroutput", {}).get("gas_lines", []))


def pytest_terminal_summary(terminalreporter):
    if GAS_LINES:
        terminalreporter.section("gas report")
        for line in GAS_LINES:
            terminalreporter.write_line(line)
