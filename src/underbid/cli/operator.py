"""`underbid oracle post` and `underbid ubt send`: what a deployment's operator does on a public chain.

On the devnet the deployment seeds the oracle price and `devnet fund` hands out UBT from the dev
deployer; on any other chain the deployer's keystore account does both with these commands.
"""

from __future__ import annotations

import click

from underbid.cli._common import UBT, AmountType, Env, common_options, ubt_short
from underbid.protocol.units import ORACLE_PRICE_DECIMALS, Unit

USD_PER_UBT = AmountType(ORACLE_PRICE_DECIMALS, "USD/UBT")


@click.group()
def oracle() -> None:
    """The UBT/USD price oracle the burn-mint equilibrium mints and redeems at."""


@oracle.command("post")
@click.option("--price", type=USD_PER_UBT, required=True, help="USD per UBT, e.g. 2.00 (8 decimals).")
@common_options
def oracle_post(env: Env, price: int) -> None:
    """Post the UBT/USD price (the oracle's updater: the deployer). Prices go stale after the max age."""
    client = env.client()
    with env.progress("posting the price"):
        receipt = client.transact(client.oracle.functions.setPrice(price), "post the oracle price")
    max_age = client.oracle.functions.maxAge().call()
    data = {"price": price, "tx": receipt["transactionHash"], "max_age": max_age}
    env.emit(data, lambda c: c.print(
        f"posted {price / 10**ORACLE_PRICE_DECIMALS:g} USD per UBT; it is usable for {max_age} s:"
        " post again before then"), amounts={"price": Unit.USD_PER_UBT})


@click.group()
def ubt() -> None:
    """The UBT token: send it to buyers and providers (on a devnet, `devnet fund` does)."""


@ubt.command("send")
@click.argument("to")
@click.option("--amount", type=UBT, required=True, help="UBT to send, e.g. 5000.")
@common_options
def ubt_send(env: Env, to: str, amount: int) -> None:
    """Send UBT from --account to TO (an account name or address)."""
    from eth_utils import is_hex_address, to_checksum_address

    from underbid.client.wallet import find_account

    address = to_checksum_address(to) if is_hex_address(to) else find_account(to).address
    client = env.client()
    with env.progress("sending UBT"):
        receipt = client.transact(client.ubt.functions.transfer(address, amount), f"send UBT to {address}")
    data = {"to": address, "amount": amount, "tx": receipt["transactionHash"], "ubt": client.ubt_balance(address)}
    env.emit(data, lambda c: c.print(f"sent {ubt_short(amount)} UBT to {address}; it holds {ubt_short(data['ubt'])}"
                                     " UBT"), amounts={"amount": Unit.UBT, "ubt": Unit.UBT})


COMMANDS = [oracle, ubt]
