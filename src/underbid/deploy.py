"""Deploys and wires the Underbid contracts through ape.

Used by `scripts/deploy.py` (`ape run deploy`) and by the test suite, so the tests run against
exactly what a deployment produces. Only this module imports ape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from underbid.deployment import CONTRACT_NAMES, AddressBook, DeployedContract


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
    unbonding_period: int = 600
    heartbeat_interval: int = 60
    heartbeat_grace: int = 30
    slash_bps: int = 5_000  # of a faulty lease's collateral
    slash_buyer_bps: int = 5_000  # of the slashed amount, to the buyer
    slash_reporter_bps: int = 1_000  # of the slashed amount, to the reporter; the rest is burned
    min_matcher_bond: int = 10_000 * 10**18  # UBT a matcher must bond to settle
    challenge_window: int = 3_600  # seconds after a round settles during which it can be challenged
    matcher_exit_delay: int = 7_200  # must exceed the challenge window
    matcher_slash_bps: int = 5_000  # of the matcher's bond, per successful challenge
    challenger_share_bps: int = 5_000  # of that slash, to the challenger; the rest is burned

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
    block: int

    def by_name(self) -> dict[str, Any]:
        return dict(zip(CONTRACT_NAMES, (self.ubt, self.credit, self.oracle, self.bme, self.settlement), strict=True))


def deploy_protocol(deployer: Any, matchers: list[Any], params: DeployParams = DeployParams(), *, seed_price: bool = True) -> Deployed:
    """Deploys every contract from `deployer`, binds the tokens and bonds the matchers.

    Args:
        deployer: an ape account; it becomes admin, oracle updater and genesis holder.
        matchers: ape accounts that will settle; each gets the minimum bond in UBT from the
            deployer and posts it (the deployer itself may be one of them).
        params: deployment parameters.
        seed_price: post `params.ubt_price` to the oracle (local chains; elsewhere the updater does).
    """
    from ape import chain, project

    block = chain.blocks.height + 1
    ubt = project.UnderbidToken.deploy(deployer, params.genesis_supply, sender=deployer)
    credit = project.UnderbidCredit.deploy(sender=deployer)
    oracle = project.PriceOracle.deploy(deployer, params.oracle_max_age, params.oracle_price_lag, sender=deployer)
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
    settlement = project.UnderbidSettlement.deploy(
        deployer, ubt, credit, params.stake_per_unit, params.min_matcher_bond, params.core_params(), sender=deployer
    )
    ubt.bindMinter(bme, sender=deployer)
    credit.bindProtocol(bme, settlement, sender=deployer)
    for matcher in matchers:
        if matcher.address != deployer.address:
            ubt.transfer(matcher, params.min_matcher_bond, sender=deployer)
        ubt.approve(settlement, params.min_matcher_bond, sender=matcher)
        settlement.bondMatcher(params.min_matcher_bond, sender=matcher)
    if seed_price:
        oracle.setPrice(params.ubt_price, sender=deployer)
    return Deployed(ubt=ubt, credit=credit, oracle=oracle, bme=bme, settlement=settlement, block=block)


def address_book(deployed: Deployed, network: str, deployer: Any, params: DeployParams) -> AddressBook:
    """The address book for `deployed`, with each contract's ABI."""
    from ape import chain

    contracts = {
        name: DeployedContract(
            address=str(instance.address),
            abi=[entry.model_dump(mode="json", by_alias=True, exclude_none=True) for entry in instance.contract_type.abi],
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
    )
