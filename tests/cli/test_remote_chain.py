"""A "remote" chain: the README's public-testnet steps against an anvil that stands in for Base Sepolia.

anvil runs with Base Sepolia's chain id (84532), a 2 s block time and a fresh mnemonic, so the
public dev keys hold nothing there and nothing can lean on instant blocks. The steps are the
README's: ape's `base:sepolia:node` pointed at the node by the global ape-config.yaml of a
temporary ape data folder, a funded key imported with `ape accounts import`, `ape run deploy
--account`, the matcher signing with that ape keystore, and buyers and providers on `--network
base-sepolia` with a keystore and an environment secret. One round clears and settles; every
devnet-only command refuses in one line. About 85 s (deploy 45, the rest 40), most of it waiting
for 2 s blocks (about 30 transactions, one after another).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from eth_account import Account

from underbid.devnet.node import find_ape, project_root, start_anvil, stop_process
from underbid.protocol.units import base_units

from ..conftest import UBC, UBT
from ..matcher.conftest import ADMIN_TOKEN, MatcherProcess, free_port
from .conftest import H100_8, Cli

CHAIN_ID = 84532  # Base Sepolia's
PASSPHRASE = "deployer passphrase"
PW = {"UNDERBID_PASSWORD": "buyer password"}


def _anvil_keys(mnemonic: str, count: int) -> list:
    return [Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{i}") for i in range(count)]


def _ape(args: list[str], env: dict[str, str], *, stdin: str | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess:
    """`ape <args>` in the project, as a user runs it."""
    return subprocess.run([find_ape(), *args], cwd=project_root(), env=env, input=stdin, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def remote(tmp_path):
    """anvil as a public L2 testnet: another chain id, 2 s blocks, keys nobody else knows."""
    Account.enable_unaudited_hdwallet_features()
    _, mnemonic = Account.create_with_mnemonic()
    port = free_port()
    anvil = start_anvil(port, tmp_path / "anvil.log", chain_id=CHAIN_ID, mnemonic=mnemonic, block_time=2)
    yield f"http://127.0.0.1:{port}", _anvil_keys(mnemonic, 3)
    stop_process(anvil.pid, "anvil")


def test_deploy_and_trade_on_a_remote_chain(tmp_path, remote):
    started = time.monotonic()
    rpc, (deployer_key, buyer_key, provider_key) = remote
    ape_data, books = tmp_path / "ape", tmp_path / "deployments"
    ape_data.mkdir()
    # README step 1: ape's Base Sepolia network, pointed at an RPC URL in the user's own ape config.
    (ape_data / "ape-config.yaml").write_text(f"node:\n  base:\n    sepolia:\n      uri: {rpc}\n")
    ape_env = {**os.environ, "APE_DATA_FOLDER": str(ape_data), "UNDERBID_DEPLOYMENTS": str(books)}

    # The public dev keys are refused off the devnet, before anything is sent (run beside the import:
    # each is a few seconds of ape starting up, and the refusal needs no account).
    refusing = subprocess.Popen([find_ape(), "run", "deploy", "--network", "base:sepolia:node", "--dev"],
                                cwd=project_root(), env=ape_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    # README step 2: the funded key goes into an ape keystore.
    imported = _ape(["accounts", "import", "deployer"], ape_env,
                    stdin=f"{deployer_key.key.hex()}\n{PASSPHRASE}\n{PASSPHRASE}\n")
    assert imported.returncode == 0, imported.stdout + imported.stderr
    keystore = json.loads((ape_data / "accounts" / "deployer.json").read_text())
    assert "0x" + keystore["address"].lower().removeprefix("0x") == deployer_key.address.lower()
    said, _ = refusing.communicate(timeout=300)
    assert refusing.returncode != 0
    assert "refusing to deploy from a public dev key on base:sepolia:node (chain 84532)" in said, said
    assert not books.exists()

    # README step 3: deploy from the keystore account, unlocked by ape's passphrase variable.
    deploy_env = {**ape_env, "APE_ACCOUNTS_deployer_PASSPHRASE": PASSPHRASE}
    deployed = _ape(["run", "deploy", "--network", "base:sepolia:node", "--account", "deployer"], deploy_env,
                    stdin="")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    book = json.loads((books / "base-sepolia.json").read_text())
    assert (book["network"], book["chain_id"], book["devnet"], book["rpc"], book["ape_network"]) == (
        "base-sepolia", CHAIN_ID, False, rpc, "base:sepolia:node")
    assert book["deployer"] == deployer_key.address
    deployed_at = time.monotonic()

    # README step 4: the matcher signs with the same ape keystore (the deployer bonded it).
    matcher = MatcherProcess(None, None, tmp_path / "matcher.db", tmp_path / "matcher.log", network="base-sepolia",
                             signer=("--account", "deployer"), env=deploy_env)
    matcher.start()
    try:
        cli = Cli(env={
            "APE_DATA_FOLDER": str(ape_data), "UNDERBID_DEPLOYMENTS": str(books),
            "APE_ACCOUNTS_deployer_PASSPHRASE": PASSPHRASE,
            "UNDERBID_NETWORK": "base-sepolia", "UNDERBID_MATCHER": matcher.url, "UNDERBID_ADMIN_TOKEN": ADMIN_TOKEN,
            "UNDERBID_HOME": str(tmp_path / "home"), "UNDERBID_DEVNET_DIR": str(tmp_path / "devnet"),
            "UNDERBID_SCRYPT_N": "1024", "PROVIDER_KEY": provider_key.key.hex(),
            "UNDERBID_RPC": None, "UNDERBID_DEPLOYMENT": None, "UNDERBID_PASSWORD": None, "UNDERBID_ACCOUNT": None,
            "COLUMNS": "200",
        })
        _devnet_only_commands_refuse(cli, tmp_path)

        # The operator posts the oracle price and hands out UBT (no faucet here).
        deployer = ["--account", "deployer"]
        assert base_units(cli("oracle", "post", "--price", "2", *deployer)["price"]) == 2 * 10**8
        # A book that claims to be a devnet's is not enough: the chain is not the devnet's.
        no_network = {"UNDERBID_NETWORK": None}
        (tmp_path / "forged.json").write_text(json.dumps({**book, "devnet": True}))
        cli.fails("devnet", "advance", "60s", "--deployment", tmp_path / "forged.json", "--rpc", rpc, code=1,
                  env=no_network, match=f"the node is chain {CHAIN_ID}, a devnet is chain 31337")
        # The same network by ape's name, and by its RPC URL alone (the book in the folder for its chain id).
        for target in (("--network", "base:sepolia"), ("--rpc", rpc)):
            assert cli("bme", *target, env=no_network)["price_usd"] == "2.0"
        cli.fails("bme", "--network", "arbitrum-sepolia", code=1, env=no_network,
                  match="no address book for network 'arbitrum-sepolia'")
        (tmp_path / "buyer.key").write_text(buyer_key.key.hex())
        cli("account", "import", "buyer", "--key-file", tmp_path / "buyer.key", env=PW)
        cli("ubt", "send", "buyer", "--amount", "200", *deployer)
        cli("ubt", "send", provider_key.address, "--amount", "500", *deployer)

        # A provider whose key is an environment secret, and a buyer with a keystore, trade one round.
        provider = ["--account", "env:PROVIDER_KEY"]
        cli("provider", "register", "--metadata", "https://gpu.example/remote.json", *provider)
        cli("provider", "stake", "--amount", "200", *provider)
        # The provider agent, on the network by name like every command here, offers its 2 units in one pass.
        ran = cli.run("provider", "run", "--market", H100_8, "--capacity", "2", "--price", "1.50", "--valid", "2h",
                      "--ticks", "1", "--json", *provider)
        assert ran.exit_code == 0, ran.stdout + ran.stderr
        events = [json.loads(line) for line in ran.stdout.splitlines()]
        assert [(e["event"], e.get("units")) for e in events if e["event"] in ("bid", "error")] == [("bid", 2)]
        buyer = ["--account", "buyer"]
        cli("credits", "mint", "--amount", "100", *buyer, env=PW)
        cli("escrow", "deposit", "--amount", "150", *buyer, env=PW)
        order = cli("order", "create", "--market", H100_8, "--units", "2", "--hours", "1", "--max-price", "2.10",
                    *buyer, env=PW)
        report = cli("matcher", "close-round")
        assert report["state"] == "confirmed" and report["matches"] == 1
        [lease] = cli("lease", "list", *buyer, env=PW)
        assert (lease["buyer"], lease["provider"], lease["units"], lease["status"]) == (
            buyer_key.address, provider_key.address, 2, "running")
        price = base_units(next(iter(report["prices"].values())))
        assert base_units(lease["price"]) == price and 1_500_000 <= price <= 2_100_000  # between the bid and the max
        assert cli("order", "list", *buyer, env=PW)[0]["digest"] == order["digest"]
        status = cli("status", *buyer, env=PW)
        assert base_units(status["escrow_locked"]) == 2 * price and status["binding"]["matcher"] == book["deployer"]
        assert base_units(cli("account", "show", "buyer")["ubt"]) == 100 * UBT
        assert base_units(status["escrow_free"]) == 150 * UBC - 2 * price
    finally:
        matcher.stop()
    done = time.monotonic()
    print(f"remote chain: deploy {deployed_at - started:.0f} s, round {done - deployed_at:.0f} s")


def _devnet_only_commands_refuse(cli: Cli, tmp_path: Path) -> None:
    """Time travel, the faucet, the dev keys, the demo and the matcher's --dev: one line each."""
    for args, what in (
        (("devnet", "advance", "60s"), "time travel (`devnet advance`)"),
        (("devnet", "fund", "0x" + "11" * 20, "--ubt", "10"), "the faucet (`devnet fund`)"),
        (("status", "--account", "dev:7"), "the public dev key dev:7"),
        (("demo",), "the demo (it trades as the dev keys and moves the clock)"),
        (("matcher", "run", "--dev", "--db", str(tmp_path / "dev.db")), "--dev (the devnet's public matcher key)"),
    ):
        err = cli.fails(*args, code=1, match=f"{what} works only on a local devnet; base-sepolia (chain {CHAIN_ID})"
                                             " is not one")
        assert "not deployed from the devnet's dev keys" in err, err
    assert not (tmp_path / "devnet").exists()  # `demo` did not start a devnet of its own instead
