"""Deploys Underbid on the connected network and writes `deployments/<network>.json`.

    ape run deploy                                   # local anvil (ape-foundry), test accounts
    ape run deploy --network ethereum:local:foundry
    UNDERBID_DEPLOYER=<ape account alias> ape run deploy --network <ecosystem:network:provider>

On a local chain the deployer is ape's first test account, the second is the matcher (bonded,
signing its own receipts), and the oracle price is seeded. Elsewhere the deployer is the ape
account named by UNDERBID_DEPLOYER and also bonds as the matcher; other matchers bond themselves
(`underbid matcher bond`). The address book lists every contract, the UnderbidTimelock that owns
the core's parameters and the MatcherCourt the settlement deploys for challenges.
"""

import os
from pathlib import Path

import click
from ape import accounts, networks
from ape.cli import ConnectedProviderCommand

from underbid.devnet.deploy import DeployParams, address_book, deploy_protocol

DEPLOYMENTS = Path(__file__).resolve().parent.parent / "deployments"


@click.command(cls=ConnectedProviderCommand)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Address book path.")
def cli(out: Path | None) -> None:
    network = networks.provider.network
    local = network.name == "local"
    if local:
        deployer, matchers = accounts.test_accounts[0], [accounts.test_accounts[1]]
    else:
        alias = os.environ.get("UNDERBID_DEPLOYER")
        if not alias:
            raise click.UsageError("set UNDERBID_DEPLOYER to the ape account alias that deploys on this network")
        deployer = accounts.load(alias)
        matchers = [deployer]
    params = DeployParams()
    deployed = deploy_protocol(deployer, matchers, params, seed_price=local)
    book = address_book(deployed, network.name, deployer, params)
    path = book.save(out or DEPLOYMENTS / f"{network.name}.json")
    for name, entry in book.contracts.items():
        click.echo(f"{name:22} {entry.address}")
    click.echo(f"address book: {path}")
