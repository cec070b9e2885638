"""Attack on the devnet-only refusal of the public dev keys: the same key under another name.

`dev:<n>` is refused off a devnet, but the key behind it is public (anvil's mnemonic); supplied as
`env:<VAR>`, imported into a keystore under any alias, or as the matcher's $UNDERBID_MATCHER_KEY,
it used to sign on any chain. Here the chain is the test anvil behind an address book that is not
a devnet's (as a staging deployment by a real key would be), so every way in must be refused.
"""

from __future__ import annotations

import os
import subprocess
import sys

from underbid.devnet.deploy import address_book
from underbid.devnet.node import MATCHER, dev_account

from ..matcher.conftest import free_port
from .conftest import make_cli

PW = {"UNDERBID_PASSWORD": "pw"}


def test_a_dev_key_under_another_name_is_refused_off_a_devnet(tmp_path, chain, protocol, deployer, params):
    book = address_book(protocol, "staging", deployer, params).model_copy(update={"devnet": False})
    path = book.save(tmp_path / "staging.json")
    rpc = chain.provider.uri
    cli = make_cli(tmp_path, rpc, path, "http://127.0.0.1:9")
    seven = dev_account(7)
    refused = "works only on a local devnet; staging (chain 31337) is not one"
    not_devnet_book = "not deployed from the devnet's dev keys"

    # dev:7 itself (refused before this change), and the same key as env:<VAR> and as a keystore.
    err = cli.fails("status", "--account", "dev:7", code=1, match=refused)
    assert not_devnet_book in err
    err = cli.fails("status", "--account", "env:SEVEN", code=1, match=f"the public dev key env:SEVEN {refused}",
                    env={"SEVEN": seven.key.hex()})
    assert not_devnet_book in err
    (tmp_path / "seven.key").write_text(seven.key.hex())
    cli("account", "import", "ops", "--key-file", tmp_path / "seven.key", env=PW)
    cli.fails("escrow", "deposit", "--amount", "1", "--account", "ops", code=1,
              match=f"the public dev key ops {refused}", env=PW)

    # The matcher on the devnet's public matcher key from $UNDERBID_MATCHER_KEY, without --dev.
    key = dev_account(MATCHER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNDERBID_")}
    env.update(UNDERBID_MATCHER_KEY=key.key.hex(), UNDERBID_HOME=str(tmp_path / "home"))
    try:
        ran = subprocess.run(
            [sys.executable, "-m", "underbid.cli", "matcher", "run", "--rpc", rpc, "--deployment", str(path),
             "--db", str(tmp_path / "matcher.db"), "--port", str(free_port()), "--round-seconds", "0"],
            env=env, capture_output=True, text=True, timeout=60,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("the matcher started on the public dev matcher key off a devnet") from None
    assert ran.returncode != 0, ran.stderr
    assert f"the public dev key {key.address} {refused}" in ran.stderr, ran.stderr


def test_the_deploy_script_knows_a_dev_key_by_its_address():
    """`ape run deploy --account <alias>` refuses a public dev key off the devnet (`is_dev_key`):
    also when the alias is a keystore the dev key was imported into, not ape's test account."""
    from types import SimpleNamespace

    from eth_account import Account

    from underbid.devnet.deploy import is_dev_key

    assert is_dev_key(SimpleNamespace(address=dev_account(0).address))
    assert not is_dev_key(SimpleNamespace(address=Account.create().address))


def test_the_listed_dev_addresses_are_the_dev_mnemonics():
    from underbid.devnet.node import ANVIL_ACCOUNTS, DEV_ADDRESSES

    assert {dev_account(i).address.lower() for i in range(ANVIL_ACCOUNTS)} == DEV_ADDRESSES
