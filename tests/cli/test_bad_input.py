"""Bad input: each mistake gives one `error: ...` line, exit code 1 (runtime) or 2 (usage), no
traceback, and nothing changes on chain (no block is mined) or in the matcher."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from underbid.devnet.deploy import address_book
from underbid.protocol.units import base_units

from .conftest import DATA, H100_8, Matcher, free_port, make_cli

PW = {"UNDERBID_PASSWORD": "pw"}
ORDER = ("order", "create", "--market", H100_8, "--units", "1", "--hours", "2", "--max-price", "2.5")


# One matcher and one funded buyer for the whole module: ape reverts the chain to this state after each test.

@pytest.fixture(scope="module")
def bad_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("bad-input")


@pytest.fixture(scope="module")
def bad_matcher(bad_workdir, protocol, deployer, params, chain):
    book = address_book(protocol, "local", deployer, params).save(bad_workdir / "local.json")
    process = Matcher(chain.provider.uri, book, bad_workdir)
    yield process, book
    process.stop()


@pytest.fixture(scope="module")
def bad_cli(bad_workdir, bad_matcher, chain):
    matcher, book = bad_matcher
    return make_cli(bad_workdir, chain.provider.uri, book, matcher.url)


@pytest.fixture(scope="module")
def alice(bad_cli) -> str:
    """A keystore account with 75 UBT, 39.875 UBC in escrow and 10 UBC in her wallet, bound to the matcher."""
    cli = bad_cli
    address = cli("account", "new", "alice", env=PW)["address"]
    cli("devnet", "fund", "alice", "--ubt", "100")
    cli("credits", "mint", "--ubt", "25", "--account", "alice", env=PW)
    cli("escrow", "deposit", "--amount", "39.875", "--account", "alice", env=PW)
    return address


CASES = [
    # (id, argv, exit code, text the one error line must contain)
    ("unknown-account", ("escrow", "deposit", "--amount", "5", "--account", "nobody"), 1, "unknown account 'nobody'"),
    ("wrong-password", ("escrow", "deposit", "--amount", "5", "--account", "alice"), 1,
     "wrong password for account 'alice'"),
    ("too-many-decimals", ("escrow", "deposit", "--amount", "1.0000001", "--account", "alice"), 2,
     "more than 6 decimals"),
    ("negative", ("escrow", "deposit", "--amount", "-5", "--account", "alice"), 2, "must not be negative"),
    ("zero", ("escrow", "withdraw", "--amount", "0", "--account", "alice"), 2, "greater than zero"),
    ("not-a-number", ("credits", "mint", "--ubt", "ten", "--account", "alice"), 2, "is not a number"),
    ("ubt-decimals", ("credits", "mint", "--ubt", "1.0000000000000000001", "--account", "alice"), 2,
     "more than 18 decimals"),
    ("price-decimals", ("order", "create", "--market", H100_8, "--hours", "2", "--max-price", "2.1234567",
                        "--account", "alice"), 2, "more than 6 decimals"),
    ("zero-duration", ("order", "create", "--market", H100_8, "--hours", "0", "--max-price", "2",
                       "--account", "alice"), 2, "greater than zero"),
    ("unknown-market-field", ("order", "create", "--market", "gpu=nvidia-h100;vram=80;flavour=x", "--hours", "2",
                              "--max-price", "2", "--account", "alice"), 2, "unknown market"),
    ("market-missing-fields", ("bid", "create", "--market", "gpu=nvidia-h100", "--capacity", "1", "--price", "1",
                               "--account", "alice"), 2, "missing vram, gpus"),
    ("market-typo", ("order", "create", "--market", "gpu=nvidia-h10;vram=80;gpus=8", "--hours", "2",
                     "--max-price", "2", "--account", "alice"), 2, "did you mean nvidia-h100?"),
    ("region-typo", ("bid", "create", "--market", "gpu=nvidia-h100;vram=80;gpus=8;region=useast", "--capacity", "1",
                     "--price", "1", "--account", "alice"), 2, "did you mean us-east?"),
    ("sdl-model-typo", ("order", "create", "--sdl", DATA / "typo-model.yaml", "--hours", "2", "--max-price", "2",
                        "--account", "alice"), 2, "did you mean nvidia-h100?"),
    ("sdl-missing-file", ("order", "create", "--sdl", DATA / "nope.yaml", "--hours", "2", "--max-price", "2",
                          "--account", "alice"), 2, "cannot read SDL file"),
    ("market-and-sdl", ("order", "create", "--sdl", DATA / "h100.yaml", "--market", H100_8, "--hours", "2",
                        "--max-price", "2", "--account", "alice"), 2, "not both"),
    ("insufficient-escrow-order", ("order", "create", "--market", H100_8, "--units", "4", "--hours", "24",
                                   "--max-price", "2", "--account", "alice"), 1, "InsufficientEscrow(buyer="),
    ("insufficient-escrow-withdraw", ("escrow", "withdraw", "--amount", "1000", "--account", "alice"), 1,
     "InsufficientEscrow(buyer="),
    ("deposit-more-than-held", ("escrow", "deposit", "--amount", "500", "--account", "alice"), 1,
     "ERC20InsufficientBalance("),
    ("mint-below-minimum", ("credits", "mint", "--ubt", "1", "--account", "alice"), 1, "MintBelowMinimum("),
    ("not-registered", ("provider", "stake", "--amount", "1", "--account", "alice"), 1, "NotRegistered("),
    ("no-such-lease", ("lease", "close", "0xdead", "--account", "alice"), 1, "no lease id starts with"),
    ("lease-not-hex", ("report", "--lease", "xyz", "--account", "alice"), 1, "is not hex"),
    ("missing-option", ("escrow", "deposit", "--account", "alice"), 2, "missing option '--amount'"),
    ("no-account", ("escrow", "deposit", "--amount", "1"), 2, "needs an account"),
    ("dev-key-name", ("status", "--account", "dev:x"), 1, "use dev:<n>"),
    ("order-too-short", ("order", "create", "--market", H100_8, "--hours", "59s", "--max-price", "2",
                         "--account", "alice"), 1, "DurationTooShort(minimum=60 s)"),
    ("complete-nothing", ("escrow", "withdraw", "--complete", "--account", "alice"), 1, "NothingToWithdraw(buyer="),
    ("bind-not-an-address", ("account", "bind", "0xabc", "--account", "alice"), 2, "is not an address"),
    ("withdraw-unbonded-nothing", ("provider", "withdraw", "--account", "alice"), 1, "NothingUnbonding"),
    ("challenge-unknown-bid", ("challenge", "--bid", "0xdead", "--account", "alice"), 1, "no bid of yours"),
]


@pytest.mark.parametrize("argv,code,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_changes_nothing(bad_cli, alice, chain, settlement, ubt, argv, code, match):
    block = chain.blocks.height
    before = (settlement.escrowOf(alice), ubt.balanceOf(alice))
    env = {"UNDERBID_PASSWORD": "wrong"} if "wrong password" in match else PW
    bad_cli.fails(*argv, code=code, match=match, env=env)
    assert chain.blocks.height == block, "a transaction was mined"
    assert (settlement.escrowOf(alice), ubt.balanceOf(alice)) == before
    assert httpx.get(bad_cli.env["UNDERBID_MATCHER"] + "/markets").json() == []


def test_matcher_unreachable(bad_cli, alice, chain):
    block = chain.blocks.height
    dead = f"http://127.0.0.1:{free_port()}"
    bad_cli.fails(*ORDER, "--account", "alice", "--matcher", dead, code=1,
                  match=f"the matcher at {dead} is unreachable", env=PW)
    bad_cli.fails("market", "list", "--matcher", dead, code=1, match="unreachable")
    assert chain.blocks.height == block
    assert bad_cli("order", "list", "--account", "alice", env=PW) == []  # nothing was journalled


def test_chain_unreachable(bad_cli):
    dead = f"http://127.0.0.1:{free_port()}"
    bad_cli.fails("bme", "--rpc", dead, code=1, match=f"no Ethereum node answers at {dead}")
    bad_cli.fails("status", "--account", "dev:3", "--rpc", dead, code=1, match="no Ethereum node answers")


def test_matcher_refusal_is_one_line(bad_cli, chain):
    """A refusal that only the matcher can judge (open bids already reserve the stake) is one line too."""
    cli = bad_cli
    cli("devnet", "fund", "dev:9", "--ubt", "100")
    cli("provider", "register", "--metadata", "https://p.example", "--account", "dev:9")
    cli("provider", "stake", "--amount", "100", "--account", "dev:9")  # covers one unit
    cli("bid", "create", "--market", H100_8, "--capacity", "1", "--price", "1", "--account", "dev:9")
    block = chain.blocks.height
    cli.fails("bid", "create", "--market", H100_8, "--capacity", "1", "--price", "1.1", "--account", "dev:9",
              code=1, match="the matcher refused the bid: capacity: provider's available stake covers 1 units")
    assert chain.blocks.height == block
    assert [base_units(b["price"]) for b in cli("bid", "list", "--account", "dev:9")] == [1_000_000]


def test_exact_decimals_are_accepted(bad_cli, alice, settlement):
    """The boundary of the decimals rule: exactly 6 decimals is fine (withdrawn after the notice)."""
    announced = bad_cli("escrow", "withdraw", "--amount", "0.000001", "--account", "alice", env=PW)
    assert announced["step"] == "requested" and settlement.pendingWithdrawal(alice)[0] == 1
    bad_cli("devnet", "advance", "30s", "--no-price")
    bad_cli("escrow", "withdraw", "--amount", "0.000001", "--account", "alice", env=PW)
    assert settlement.escrowOf(alice)[0] == 39_875_000 - 1


def test_withdrawal_before_the_notice_is_one_line(bad_cli, alice, chain, settlement):
    """Completing an announced withdrawal too early: one line with the time left, nothing sent; a
    different amount re-announces (restarting the notice)."""
    cli = bad_cli
    cli("escrow", "withdraw", "--amount", "5", "--account", "alice", env=PW)
    block = chain.blocks.height
    err = cli.fails("escrow", "withdraw", "--account", "alice", code=1, match="NoticeNotOver(readyAt=", env=PW)
    assert "the withdrawal of 5 UBC is announced; the notice is not over (ready in" in err
    cli.fails("escrow", "withdraw", "--complete", "--amount", "6", "--account", "alice", code=2,
              match="the announced withdrawal is 5 UBC", env=PW)
    assert chain.blocks.height == block
    again = cli("escrow", "withdraw", "--amount", "6", "--account", "alice", env=PW)
    assert again["step"] == "requested" and base_units(again["replaced"]) == 5_000_000
    assert settlement.pendingWithdrawal(alice)[0] == 6_000_000
    # Announced credits do not count for new orders.
    cli.fails("order", "create", "--market", H100_8, "--units", "1", "--hours", "8", "--max-price", "4.5",
              "--account", "alice", code=1, match="InsufficientEscrow(buyer=", env=PW)


def test_password_prompt(bad_cli, alice, chain):
    """Keys and passwords can be typed at hidden prompts; no password at all is a one-line error."""
    made = bad_cli("account", "import", "typed", input="0x" + "07" * 32 + "\n" + "pw2\npw2\n")
    assert made["source"] == "underbid"
    shown = bad_cli("escrow", "show", "--account", "typed", input="pw2\n")
    assert shown["address"] == made["address"] and base_units(shown["free"]) == 0
    block = chain.blocks.height
    result = bad_cli.run("escrow", "deposit", "--amount", "1", "--account", "alice")  # no input at the prompt
    assert result.exit_code == 1
    prompt, error = result.stderr.split("error: ")
    assert prompt == "password for alice:" and error.startswith("account 'alice' needs its password")
    result = bad_cli.run("account", "import", "bad", input="0x1234\n")
    assert result.exit_code == 1 and result.stderr.strip().endswith(
        "that is not a private key: expected 32 bytes as 64 hex digits"
    )
    bad_cli.fails("account", "new", "alice", code=1, match="already exists", env=PW)
    assert chain.blocks.height == block


def test_ladder_refusals_are_one_line_and_post_nothing(bad_cli, chain):
    cli = bad_cli
    cli("devnet", "fund", "dev:12", "--ubt", "300")
    cli("provider", "register", "--metadata", "https://p12.example", "--account", "dev:12")
    cli("provider", "stake", "--amount", "200", "--account", "dev:12")  # covers two units
    ladder = ("bid", "ladder", "--market", H100_8, "--capacity", "1", "--account", "dev:12")
    cli.fails(*ladder, "--price", "1", "--price", "1", code=2, match="each rung needs its own price")
    cli.fails(*ladder, "--price", "1", "--price", "2", "--price", "3", code=1, match="InsufficientFreeStake")
    cli("bid", "create", "--market", H100_8, "--capacity", "1", "--price", "1", "--account", "dev:12")
    # Two rungs fit the stake alone, not beside the open bid: the matcher refuses the whole ladder.
    cli.fails(*ladder, "--price", "2", "--price", "3", code=1, match="bids.1.capacity")
    assert [base_units(b["price"]) for b in cli("bid", "list", "--account", "dev:12")] == [1_000_000]


JSON_CASES = [
    # (id, argv, exit code, error code, custom error the chain answered)
    ("usage", ("escrow", "deposit", "--amount", "-5", "--account", "alice"), 2, "usage", None),
    ("revert", ("escrow", "withdraw", "--amount", "1000", "--account", "alice"), 1, "revert", "InsufficientEscrow"),
    ("wallet", ("escrow", "deposit", "--amount", "5", "--account", "nobody"), 1, "wallet", None),
    ("matcher", ("market", "list", "--matcher", "http://127.0.0.1:9"), 1, "matcher", None),
]


@pytest.mark.parametrize("argv,exit_code,code,revert", [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES])
def test_json_errors_are_objects_with_a_code(bad_cli, alice, chain, argv, exit_code, code, revert):
    """With --json a script reads stdout alone: on failure one JSON object naming the error's kind."""
    import json

    block = chain.blocks.height
    result = bad_cli.run(*argv, "--json", env=PW)
    assert result.exit_code == exit_code
    error = json.loads(result.stdout)["error"]
    assert error["code"] == code and error["exit_code"] == exit_code and error["message"]
    assert error.get("revert") == revert
    assert "\n" not in error["message"] and result.stderr.strip() == ""
    assert chain.blocks.height == block


def test_json_tx_hashes_carry_0x(bad_cli, alice):
    """Transaction hashes in --json output are `0x` + 64 hex digits, as every other tool prints them."""
    sent = bad_cli("escrow", "deposit", "--amount", "1", "--account", "alice", env=PW)
    assert sent["tx"].startswith("0x") and len(sent["tx"]) == 66
    int(sent["tx"], 16)


def _ints(value) -> list[int]:
    if isinstance(value, dict):
        return [i for v in value.values() for i in _ints(v)]
    if isinstance(value, list):
        return [i for v in value for i in _ints(v)]
    return [value] if isinstance(value, int) and not isinstance(value, bool) else []


def test_json_amounts_are_exact_decimal_strings(bad_cli, alice, settlement, ubt):
    """Amounts are `{"value": "<exact decimal>", "unit"}`: no integer a JSON parser would round (> 2^53)."""
    status = bad_cli("status", "--account", "alice", env=PW)
    assert status["escrow_free"] == {"value": "39.875", "unit": "UBC"}
    assert base_units(status["ubt"]) == ubt.balanceOf(alice) and status["ubt"]["unit"] == "UBT"
    assert status["bme"]["price"]["unit"] == "USD/UBT" and status["bme"]["ubt_supply"]["unit"] == "UBT"
    commands = (("status", "--account", "alice"), ("bme",), ("account", "show", "alice"),
                ("escrow", "show", "--account", "alice"))
    for argv in commands:
        out = bad_cli(*argv, env=PW)
        assert all(abs(i) < 2**53 for i in _ints(out)), (argv, [i for i in _ints(out) if abs(i) >= 2**53])


def test_a_matcher_without_a_c_compiler_stops_in_one_line(tmp_path) -> None:
    """`underbid matcher run` on a machine that cannot build the clearing's network simplex (no
    cache, a compiler that fails): one `error:` line naming the cause and the fix, exit code 1,
    before it touches the chain or the store."""
    env = {**os.environ, "UNDERBID_NATIVE_DIR": str(tmp_path / "native"), "CC": "false"}
    result = subprocess.run([sys.executable, "-m", "underbid.cli", "matcher", "run", "--dev",
                             "--db", str(tmp_path / "matcher.db")],
                            env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: the clearing needs its compiled network simplex, which is unavailable "
                               "(false failed on netsimplex.c"), lines[0]
    assert lines[0].endswith("run scripts/setup.sh, or set CC to a C compiler")
    assert not (tmp_path / "matcher.db").exists()
