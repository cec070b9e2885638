"""`underbid account new | import | list | show | bind`: encrypted keystore accounts and their matcher binding."""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.table import Table

from underbid.cli._common import Env, ago, common_options, kv_table, ubc, ubt_short


@click.group()
def account() -> None:
    """Encrypted keystore accounts (Web3 Secret Storage, readable by `ape accounts` and geth).

    Stored in ~/.underbid/accounts; ape's ~/.ape/accounts is read too.
    """


def _new_password(env: Env) -> str:
    from underbid.client.wallet import PASSWORD_ENV, read_password_file

    if env.password_file:
        return read_password_file(env.password_file)
    if os.environ.get(PASSWORD_ENV) is not None:
        return os.environ[PASSWORD_ENV]
    try:
        return click.prompt("new password", hide_input=True, confirmation_prompt=True, err=True, default="",
                            show_default=False)
    except click.Abort:
        return ""  # save_account refuses an empty password with a one-line error


def _saved(env: Env, entry, note: str) -> None:
    data = {"alias": entry.alias, "address": entry.address, "keystore": str(entry.path), "source": entry.source}

    def render(console):
        console.print(f"{note} [bold]{entry.alias}[/bold] {entry.address}")
        console.print(f"keystore: {entry.path}")

    env.emit(data, render)


@account.command("new")
@click.argument("alias")
@click.option("--ape", "in_ape", is_flag=True, help="Store it in ape's account folder (`ape accounts list` shows it).")
@common_options
def account_new(env: Env, alias: str, in_ape: bool) -> None:
    """Create a new random account ALIAS, encrypted with a password."""
    from eth_account import Account

    from underbid.client.wallet import check_alias, list_accounts, save_account

    check_alias(alias)
    if any(e.alias == alias for e in list_accounts()):
        from underbid.client.wallet import WalletError

        raise WalletError(f"an account named {alias!r} already exists (`underbid account list`)")
    password = _new_password(env)
    entry = save_account(alias, Account.create(), password, ape=in_ape)
    _saved(env, entry, "created")


@account.command("import")
@click.argument("alias")
@click.option("--key-file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Read the private key (hex) from this file instead of a hidden prompt.")
@click.option("--ape", "in_ape", is_flag=True, help="Store it in ape's account folder.")
@common_options
def account_import(env: Env, alias: str, key_file: Path | None, in_ape: bool) -> None:
    """Import a private key as ALIAS, encrypted with a password."""
    from underbid.client.wallet import check_alias, parse_private_key, save_account

    check_alias(alias)
    text = key_file.read_text() if key_file else click.prompt("private key (hex)", hide_input=True, err=True,
                                                              default="", show_default=False)
    signer = parse_private_key(text)
    password = _new_password(env)
    entry = save_account(alias, signer, password, ape=in_ape)
    _saved(env, entry, "imported")


@account.command("list")
@common_options
def account_list(env: Env) -> None:
    """List keystore accounts (underbid's and ape's folders)."""
    from underbid.client.wallet import list_accounts

    entries = list_accounts()
    data = [{"alias": e.alias, "address": e.address, "source": e.source, "keystore": str(e.path)} for e in entries]

    def render(console):
        if not entries:
            console.print("no accounts yet: `underbid account new <name>` (or use dev:<n> on a devnet)")
            return
        table = Table("alias", "address", "from", "keystore")
        for e in entries:
            table.add_row(e.alias, e.address, e.source, str(e.path))
        console.print(table)

    env.emit(data, render)


@account.command("show")
@click.argument("name", required=False)
@common_options
def account_show(env: Env, name: str | None) -> None:
    """Show an account (NAME or --account): address, keystore, and balances if the chain answers."""
    from underbid.client.session import UnderbidError

    if name:
        env.account_name = name
    entry = env.account_entry()
    data = {"alias": entry.alias, "address": entry.address, "source": entry.source,
            "keystore": str(entry.path) if entry.path else None}
    try:
        client = env.client(account=False)
        free, locked = client.escrow(entry.address)
        data.update(eth=client.eth_balance(entry.address), ubt=client.ubt_balance(entry.address),
                    credits=client.credit_balance(entry.address), escrow_free=free, escrow_locked=locked,
                    binding=client.binding(entry.address))
    except UnderbidError as exc:
        data["chain"] = str(exc)

    def render(console):
        rows = [("alias", entry.alias), ("address", entry.address), ("from", entry.source)]
        if entry.path:
            rows.append(("keystore", entry.path))
        if "ubt" in data:
            rows += [
                ("ETH", ubt_short(data["eth"])),
                ("UBT", ubt_short(data["ubt"])),
                ("credits", f"{ubc(data['credits'])} UBC"),
                ("escrow", f"{ubc(data['escrow_free'])} free, {ubc(data['escrow_locked'])} locked"),
                ("matcher", binding_text(data["binding"])),
            ]
        else:
            rows.append(("chain", data["chain"]))
        console.print(kv_table(None, rows))

    env.emit(data, render)


def binding_text(state: dict) -> str:
    """One line for a matcher binding: the matcher bound now and any pending change."""
    now = state["matcher"] or "none (unbound: `underbid account bind`)"
    if state["pending"]:
        return f"{now}; changing to {state['next'] or 'none'} in {ago(state['change_left'])}"
    return now


def _address_arg(ctx, param, value: str | None) -> str | None:
    if value is None:
        return None
    from eth_utils import is_hex_address, to_checksum_address

    if not is_hex_address(value):
        raise click.BadParameter(f"{value!r} is not an address (0x and 40 hex digits)", ctx=ctx, param=param)
    return to_checksum_address(value)


@account.command("bind")
@click.argument("matcher_address", required=False, callback=_address_arg, metavar="[MATCHER_ADDRESS]")
@common_options
def account_bind(env: Env, matcher_address: str | None) -> None:
    """Bind this account to a matcher (default: the one at --matcher, by its address).

    Only the matcher an account is bound to may settle its orders and bids. Binding an unbound
    account takes effect at once; moving to another matcher takes effect after the notice period,
    and no matcher takes the account's messages while the change is pending.
    """
    client = env.client()
    target = matcher_address or env.matcher_address()
    state = client.binding(client.address)
    if state["matcher"] == target and not state["pending"]:
        data = {**state, "changed": False}
        env.emit(data, lambda c: c.print(f"{client.address} is already bound to matcher {target}"))
        return
    if state["pending"] and state["next"] == target:
        data = {**state, "changed": False}
        env.emit(data, lambda c: c.print(
            f"{client.address} is already moving to matcher {target}: effective in {ago(state['change_left'])}"))
        return
    if not client.settlement.functions.isBondedMatcher(target).call() and not env.json:
        click.echo(f"warning: {target} is not a bonded matcher now: it cannot settle", err=True)
    with env.progress("binding"):
        result = client.bind_matcher(target)
    after = client.binding(client.address)
    data = {**result, **after, "target": target, "changed": True}  # `matcher`: the one bound now

    def render(console):
        if result["immediate"]:
            console.print(f"bound {client.address} to matcher {target}: only it may settle your orders and bids")
        else:
            console.print(
                f"requested a move of {client.address} from matcher {state['matcher']} to {target}: effective in"
                f" {ago(after['change_left'])}; until then no matcher takes your new orders or bids"
            )

    env.emit(data, render)


COMMANDS = [account]
