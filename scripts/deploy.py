"""Deploys Underbid on the connected network and writes its address book, `deployments/<name>.json`.

    ape run deploy                                         # the local devnet (ape-foundry), dev keys
    ape run deploy --network ethereum:local:foundry
    ape run deploy --network base:sepolia:node --account deployer   # an ape keystore account

On the local devnet (ape's `local` network, chain 31337) the deployer is ape's first test account
and the second is the matcher (bonded, signing its own receipts), and the oracle price is seeded;
the book is marked a devnet's. Anywhere else the deployer is the ape keystore account `--account`
names (unlocked from $APE_ACCOUNTS_<alias>_PASSPHRASE, else a prompt) and also bonds as the
matcher; other matchers bond themselves (`underbid matcher bond`), and the oracle updater (the
deployer) posts prices (`underbid oracle post`). The public dev keys (`--dev`, `TEST::<n>`) are
refused there. The book is named after the network (`underbid.chain.networks.book_name`: `local`,
`sepolia`, `base-sepolia`, `chain-<id>`), in `$UNDERBID_DEPLOYMENTS` or `deployments/`, and records
the RPC URL ape connected to (`--book-rpc` records another, e.g. one without an API key; `''` none).
It lists every contract, the UnderbidTimelock that owns the core's parameters and the MatcherCourt
the settlement deploys for challenges.
"""

from pathlib import Path

import click
from ape import accounts, chain, networks
from ape.cli import ConnectedProviderCommand, account_option

from underbid.chain.networks import book_name, deployments_dir
from underbid.devnet.deploy import DeployParams, address_book, deploy_protocol, is_dev_key
from underbid.devnet.node import DEV_CHAIN_ID


@click.command(cls=ConnectedProviderCommand)
@account_option(prompt=False)
@click.option("--dev", is_flag=True, help="Deploy from ape's test accounts (public dev keys): the local devnet only.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Address book path [default: deployments/<network name>.json].")
@click.option("--book-rpc", default=None, metavar="URL",
              help="RPC URL to record in the address book [default: the one ape connected to; '' records none].")
def cli(account, dev: bool, out: Path | None, book_rpc: str | None) -> None:
    provider = networks.provider
    network = provider.network
    choice = f"{network.ecosystem.name}:{network.name}:{provider.name}"
    chain_id = chain.chain_id
    local = network.name == "local" and chain_id == DEV_CHAIN_ID
    if (dev or (account is not None and is_dev_key(account))) and not local:
        raise click.UsageError(
            f"refusing to deploy from a public dev key on {choice} (chain {chain_id}): anyone holds those keys."
            " Deploy from an ape keystore account: --account <alias> (`ape accounts import <alias>`)"
        )
    if account is None and not (local or dev):
        raise click.UsageError(
            f"say who deploys on {choice} (chain {chain_id}): --account <alias> of an ape keystore account"
            " (`ape accounts import <alias>`), funded with the chain's native token for gas"
        )
    if account is None or dev:
        deployer, matchers = accounts.test_accounts[0], [accounts.test_accounts[1]]
    else:
        deployer, matchers = account, [account]
        if hasattr(account, "set_autosign"):
            # One unlock for the whole deployment (about 15 transactions), from
            # $APE_ACCOUNTS_<alias>_PASSPHRASE when set, else one prompt; not a prompt per transaction.
            account.set_autosign(True)
        balance = provider.get_balance(deployer.address)
        if balance == 0:
            raise click.UsageError(f"{deployer.alias} ({deployer.address}) holds no native token on {choice} for"
                                   " gas: fund it first (a faucet, on a testnet)")
    params = DeployParams()
    click.echo(f"deploying on {choice} (chain {chain_id}) from {deployer.address}")
    deployed = deploy_protocol(deployer, matchers, params, seed_price=local)
    name = book_name(network.ecosystem.name, network.name, chain_id)
    rpc = provider.uri if book_rpc is None else (book_rpc or None)
    book = address_book(deployed, name, deployer, params, rpc=rpc, ape_network=choice)
    path = book.save(out or deployments_dir() / f"{name}.json")
    for contract, entry in book.contracts.items():
        click.echo(f"{contract:22} {entry.address}")
    click.echo(f"address book: {path} (network {name}{', a devnet' if book.devnet else ''})")
