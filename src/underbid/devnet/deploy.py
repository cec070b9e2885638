"""Deploys and wires the Underbid contracts through ape.

Used by `scripts/deploy.py` (`ape run deploy`) and by the test suite, so the tests run against
exactly what a deployment produces. Only this module imports ape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from web3.utils.address import get_create_address

from underbid.chain.deployment import CONTRACT_NAMES, AddressBook, DeployedContract


@dataclass(frozen=True)
class DeployParams:
    """Deployment parameters. The defaults are the devnet's: a whole demo runs in minutes."""

    genesis_supply: int = 100_000_000 * 10**18  # UBT wei minted to the deployer once
    ubt_price: int = 2 * 10**8  # USD per UBT, 8 decimals; seeded on local chains only
    oracle_max_age: int = 3600  # seconds a posted price stays usable
    # Seconds per oracle band period: the BME mints at the lowest and redeems at the highest price
    # in effect over the last 1-2 periods. At least the max age, the longest update spacing.
    oracle_price_lag: int = 3600
    mint_spread_bps: int = 25
    min_mint_credits: int = 10 * 10**6  # 10 UBC, as Akash's 10 ACT minimum
    redeem_cap: int = 1_000_000 * 10**18  # UBT that redemptions may mint, net, per window
    redeem_window: int = 86_400
    stake_per_unit: int = 100 * 10**18  # UBT collateral per leased GPU unit
    # Fixed for good (the core's `Limits`): what the soundness argument leans on.
    notice_period: int = 30  # seconds between announcing and doing a withdrawal, unstake, cancel or matcher change
    max_round_span: int = 20  # seconds a round's later batches may land after its first
    min_lease_duration: int = 60  # the shortest lease settle opens, in seconds
    admin_delay: int = 3_600  # the timelock's minimum delay before a parameter change applies
    unbonding_period: int = 600
    heartbeat_interval: int = 60
    heartbeat_grace: int = 30
    slash_bps: int = 5_000  # of a faulty lease's collateral
    slash_buyer_bps: int = 5_000  # of the slashed amount, to the buyer
    slash_reporter_bps: int = 1_000  # of the slashed amount, to the reporter; the rest is burned
    min_matcher_bond: int = 10_000 * 10**18  # UBT a matcher must bond to settle
    challenge_window: int = 3_600  # seconds after a witness lease's round span during which it can be challenged
    matcher_exit_delay: int = 7_200  # must exceed the round span plus the challenge window
    matcher_slash_bps: int = 5_000  # of the matcher's bond, per successful challenge
    challenger_share_bps: int = 5_000  # of that slash, to the challenger; the rest is burned

    def core_limits(self) -> tuple[int, ...]:
        return (
            self.stake_per_unit,
            self.min_matcher_bond,
            self.notice_period,
            self.max_round_span,
            self.min_lease_duration,
        )

    def core_params(self) -> tuple[int, ...]:
        return (
            self.unbonding_period,
            self.heartbeat_interval,
            self.heartbeat_grace,
            self.slash_bps,
            self.slash_buyer_bps,
            self.slash_reporter_bps,
            self.challenge_window,
            self.matcher_exit_delay,
            self.matcher_slash_bps,
            self.challenger_share_bps,
        )


@dataclass
class Deployed:
    """The deployed ape contract instances."""

    ubt: Any
    credit: Any
    oracle: Any
    bme: Any
    settlement: Any
    timelock: Any
    court: Any
    block: int

    def by_name(self) -> dict[str, Any]:
        contracts = (self.ubt, self.credit, self.oracle, self.bme, self.settlement, self.timelock, self.court)
        return dict(zip(CONTRACT_NAMES, contracts, strict=True))


def deploy_protocol(
    deployer: Any, matchers: list[Any], params: DeployParams = DeployParams(), *, seed_price: bool = True
) -> Deployed:
    """Deploys every contract from `deployer`, binds the tokens and bonds the matchers.

    The core's owner, and the BME's and the oracle's admin, is an OpenZeppelin timelock
    (`UnderbidTimelock`, `params.admin_delay`) whose only proposer and executor is the deployer,
    so a parameter change is public for the delay before it applies.

    Args:
        deployer: an ape account; it becomes timelock proposer and executor, oracle updater and
            genesis holder.
        matchers: ape accounts that will settle; each gets the minimum bond in UBT from the
            deployer and posts it (the deployer itself may be one of them).
        params: deployment parameters.
        seed_price: post `params.ubt_price` to the oracle (local chains; elsewhere the updater does).
    """
    from ape import chain, project

    block = chain.blocks.height + 1
    ubt = project.UnderbidToken.deploy(deployer, params.genesis_supply, sender=deployer)
    oracle = project.PriceOracle.deploy(deployer, params.oracle_max_age, params.oracle_price_lag, sender=deployer)
    timelock = project.UnderbidTimelock.deploy(
        params.admin_delay, [deployer], [deployer], "0x0000000000000000000000000000000000000000", sender=deployer
    )
    # The credit fixes its escrow at construction, and the settlement needs the credit's address:
    # the credit is given the address the settlement will get from the deployer's next nonce, and
    # the settlement's constructor refuses a credit bound to any other (so a transaction of the
    # deployer's landing in between fails the deployment instead of misbinding it).
    credit = project.UnderbidCredit.deploy(get_create_address(deployer.address, deployer.nonce + 1), sender=deployer)
    settlement = project.UnderbidSettlement.deploy(
        timelock, ubt, credit, params.core_limits(), params.core_params(), sender=deployer
    )
    bme = project.BurnMintEquilibrium.deploy(
        deployer,
        ubt,
        credit,
        oracle,
        params.mint_spread_bps,
        params.min_mint_credits,
        params.redeem_cap,
        params.redeem_window,
        sender=deployer,
    )
    ubt.bindMinter(bme, sender=deployer)
    credit.bindProtocol(bme, sender=deployer)
    for matcher in matchers:
        if matcher.address != deployer.address:
            ubt.transfer(matcher, params.min_matcher_bond, sender=deployer)
        ubt.approve(settlement, params.min_matcher_bond, sender=matcher)
        settlement.bondMatcher(params.min_matcher_bond, matcher.address, sender=matcher)
    if seed_price:
        oracle.setPrice(params.ubt_price, sender=deployer)
    # The BME's and the oracle's parameters change only through the timelock too; the deployer
    # keeps the oracle's updater role, since prices must post at once.
    for governed in (bme, oracle):
        admin_role = governed.DEFAULT_ADMIN_ROLE()
        governed.grantRole(admin_role, timelock, sender=deployer)
        governed.renounceRole(admin_role, deployer, sender=deployer)
    court = project.MatcherCourt.at(settlement.court())
    return Deployed(
        ubt=ubt, credit=credit, oracle=oracle, bme=bme, settlement=settlement, timelock=timelock, court=court,
        block=block,
    )


def is_dev_key(account: Any) -> bool:
    """True if `account` is one of ape's test accounts: the public dev keys (`TEST::<n>`, `dev:<n>`),
    or holds one of those keys under another name (a keystore it was imported into, say)."""
    from ape.api.accounts import TestAccountAPI

    from underbid.devnet.node import is_dev_address

    return isinstance(account, TestAccountAPI) or is_dev_address(str(account.address))


def address_book(
    deployed: Deployed,
    network: str,
    deployer: Any,
    params: DeployParams,
    *,
    rpc: str | None = None,
    ape_network: str | None = None,
) -> AddressBook:
    """The address book for `deployed`, with each contract's ABI.

    It is marked a devnet's (`devnet`: devnet-only commands may run on it) only when a public dev
    key deployed it on the devnet's chain id: whoever holds a deployment's admin keys decides
    whether its clock and faucet may be played with, and on a real chain nobody may.
    """
    from ape import chain

    from underbid.devnet.node import DEV_CHAIN_ID

    contracts = {
        name: DeployedContract(
            address=str(instance.address),
            abi=[
                entry.model_dump(mode="json", by_alias=True, exclude_none=True) for entry in instance.contract_type.abi
            ],
        )
        for name, instance in deployed.by_name().items()
    }
    return AddressBook(
        network=network,
        chain_id=chain.chain_id,
        block=deployed.block,
        deployer=str(deployer.address),
        contracts=contracts,
        params=asdict(params),
        devnet=is_dev_key(deployer) and chain.chain_id == DEV_CHAIN_ID,
        rpc=rpc,
        ape_network=ape_network,
    )
