"""`underbid matcher bond | unbond | withdraw | status` through the real CLI against the live test anvil:
a fresh account bonds, may settle, asks to leave, cannot withdraw before the exit delay (one error line,
nothing on chain changes), and gets its UBT back after it. Bad input is a usage error (exit 2)."""

from __future__ import annotations

import pytest

from underbid.devnet.deploy import address_book
from underbid.protocol.units import Unit, amount_json, base_units

from ..conftest import UBT
from .conftest import free_port, make_cli

PW = {"UNDERBID_PASSWORD": "bond pw"}
ME = ("--account", "mia")


# The bond commands need no matcher process: one address book and one keystore for the module; ape
# reverts the chain after each test, so each test funds the account itself.

@pytest.fixture(scope="module")
def bond_cli(tmp_path_factory, protocol, deployer, params, chain):
    workdir = tmp_path_factory.mktemp("matcher-bond")
    book = address_book(protocol, "local", deployer, params).save(workdir / "local.json")
    return make_cli(workdir, chain.provider.uri, book, f"http://127.0.0.1:{free_port()}")


@pytest.fixture(scope="module")
def mia_address(bond_cli) -> str:
    return bond_cli("account", "new", "mia", env=PW)["address"]


@pytest.fixture
def mia(bond_cli, mia_address) -> str:
    """A fresh keystore account (not a matcher) holding 12,000 UBT."""
    bond_cli("devnet", "fund", "mia", "--ubt", "12000")
    return mia_address


def test_bond_unbond_withdraw(bond_cli, mia, chain, settlement, ubt, params):
    cli = bond_cli
    assert params.min_matcher_bond == 10_000 * UBT and params.matcher_exit_delay == 7200
    before = cli("matcher", "status", *ME, env=PW)
    assert before == {**before, "address": mia, "bond": amount_json(0, Unit.UBT),
                      "min_bond": amount_json(10_000 * UBT, Unit.UBT), "meets_minimum": False,
                      "bonded": False, "exiting": False, "exit_at": 0, "exit_left": 0, "withdrawable": False,
                      "challenge_window": 3600, "exit_delay": 7200}

    # Below the minimum: bonded, but it may not settle yet.
    part = cli("matcher", "bond", "--amount", "4000", *ME, env=PW)
    assert (base_units(part["bonded"]), base_units(part["bond"]), part["meets_minimum"]) == (
        4000 * UBT, 4000 * UBT, False)
    assert part["tx"]
    assert part["receipt_signer"] == mia  # by default the matcher signs its own receipts
    assert settlement.matchers(mia) == (4000 * UBT, 0, 0, mia) and not settlement.isBondedMatcher(mia)
    assert ubt.balanceOf(mia) == 8000 * UBT

    # The rest (human output): now at the minimum.
    result = cli.run("matcher", "bond", "--amount", "6000", *ME, env=PW)
    assert result.exit_code == 0, result.stderr
    assert "bonded 6,000 UBT: the bond is now 10,000 UBT; it meets the minimum" in " ".join(result.stdout.split())
    assert settlement.isBondedMatcher(mia) and ubt.balanceOf(mia) == 2000 * UBT

    # Anyone can look a matcher up by address, without an account.
    status = cli("matcher", "status", "--address", mia.lower())
    assert (status["address"], base_units(status["bond"]), status["bonded"], status["exiting"]) == (
        mia, 10_000 * UBT, True, False)
    shown = cli.run("matcher", "status", "--address", mia)
    text = " ".join(shown.stdout.split())
    assert shown.exit_code == 0 and "bond 10,000 UBT" in text and "bonded (may settle) yes" in text
    assert "minimum bond 10,000 UBT (met)" in text and "challenge window 1h00m" in text

    # Asking to leave stops settling at once; the bond stays until the exit delay is over.
    result = cli.run("matcher", "unbond", *ME, env=PW)
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "can no longer settle rounds" in text and "(in 2h00m)" in text
    assert "exit delay (2h00m) is longer than the challenge window (1h00m)" in text
    bond, exit_at, _, _ = settlement.matchers(mia)
    assert bond == 10_000 * UBT and exit_at == chain.blocks.head.timestamp + 7200
    assert not settlement.isBondedMatcher(mia)
    status = cli("matcher", "status", *ME, env=PW)
    assert status["exiting"] and status["exit_at"] == exit_at and not status["bonded"] and not status["withdrawable"]
    assert status["meets_minimum"] and status["exit_left"] == 7200
    text = " ".join(cli.run("matcher", "status", *ME, env=PW).stdout.split())
    assert "bonded (may settle) no: it asked to leave" in text and "withdrawable at" in text and "(in 2h00m)" in text

    # Too early: one error line with the time left, and nothing changes on chain.
    block = chain.blocks.height
    err = cli.fails("matcher", "withdraw", *ME, code=1, match="ExitDelayNotOver(exitAt=", env=PW)
    assert "the matcher bond of 10,000 UBT can be withdrawn in 2h00m" in err
    cli.fails("matcher", "bond", "--amount", "1", *ME, code=1, match="MatcherExiting(matcher=", env=PW)
    cli.fails("matcher", "unbond", *ME, code=1, match="already asked to leave", env=PW)
    assert chain.blocks.height == block
    assert settlement.matchers(mia) == (10_000 * UBT, exit_at, 0, mia) and ubt.balanceOf(mia) == 2000 * UBT

    cli("devnet", "advance", "1h", "--no-price")
    err = cli.fails("matcher", "withdraw", *ME, code=1, match="ExitDelayNotOver(", env=PW)
    assert "can be withdrawn in 1h00m" in err or "can be withdrawn in 59m" in err

    # Past the exit delay: the UBT comes back.
    cli("devnet", "advance", "1h", "--no-price")
    assert cli("matcher", "status", *ME, env=PW)["withdrawable"]
    done = cli("matcher", "withdraw", *ME, env=PW)
    assert (base_units(done["withdrawn"]), base_units(done["ubt"])) == (10_000 * UBT, 12_000 * UBT)
    assert ubt.balanceOf(mia) == 12_000 * UBT and settlement.matchers(mia)[0] == 0
    after = cli("matcher", "status", *ME, env=PW)
    assert (base_units(after["bond"]), after["bonded"], after["exiting"]) == (0, False, False)


def test_bond_withdraw_human_output(bond_cli, mia, settlement):
    cli = bond_cli
    result = cli.run("matcher", "bond", "--amount", "500.5", *ME, env=PW)
    text = " ".join(result.stdout.split())
    assert result.exit_code == 0 and "bond 9,499.5 UBT more before this matcher can settle" in text
    cli("matcher", "unbond", *ME, env=PW)
    cli("devnet", "advance", "2h", "--no-price")
    result = cli.run("matcher", "withdraw", *ME, env=PW)
    assert result.exit_code == 0, result.stderr
    assert "withdrew 500.5 UBT of matcher bond" in result.stdout
    assert settlement.matchers(mia)[:2] == (0, 0)


def test_status_of_the_deployed_matcher(bond_cli, matcher, params):
    status = bond_cli("matcher", "status", "--address", str(matcher.address))
    assert status["bonded"] and base_units(status["bond"]) == params.min_matcher_bond and not status["exiting"]
    assert status["receipt_signer"] == str(matcher.address)


def test_receipt_signer_is_fixed_while_bonded(bond_cli, mia, chain, settlement):
    """A matcher may name another key as its receipt signer with its first bond; later bonds keep it."""
    cli = bond_cli
    signer = "0x" + "ab" * 20
    first = cli("matcher", "bond", "--amount", "100", "--receipt-signer", signer, *ME, env=PW)
    assert first["receipt_signer"].lower() == signer
    assert cli("matcher", "bond", "--amount", "100", *ME, env=PW)["receipt_signer"].lower() == signer  # kept
    block = chain.blocks.height
    cli.fails(
        "matcher", "bond", "--amount", "1", "--receipt-signer", mia, *ME, code=1, match="ReceiptSignerFixed(", env=PW
    )
    assert chain.blocks.height == block
    assert settlement.matchers(mia)[3].lower() == signer


@pytest.mark.parametrize("argv,code,match", [
    (("matcher", "bond", "--amount", "-5", *ME), 2, "must not be negative"),
    (("matcher", "bond", "--amount", "1.0000000000000000001", *ME), 2, "more than 18 decimals"),
    (("matcher", "bond", "--amount", "0", *ME), 2, "greater than zero"),
    (("matcher", "bond", "--amount", "lots", *ME), 2, "is not a number"),
    (("matcher", "bond", *ME), 2, "missing option '--amount'"),
    (("matcher", "bond", "--amount", "10"), 2, "needs an account"),
    (("matcher", "status",), 2, "pass --address"),
    (("matcher", "status", "--address", "0x1234"), 2, "is not an address"),
    (("matcher", "bond", "--amount", "12000.5", *ME), 1, "ERC20InsufficientBalance("),
    (("matcher", "unbond", *ME), 1, "MatcherNotBonded(matcher="),
    (("matcher", "withdraw", *ME), 1, "ExitNotRequested(matcher="),
    (("matcher", "bond", "--amount", "10", "--receipt-signer", "0x12", *ME), 2, "is not an address"),
], ids=["negative", "too-many-decimals", "zero", "not-a-number", "missing-amount", "no-account", "status-no-who",
        "bad-address", "more-than-held", "unbond-unbonded", "withdraw-without-exit",
        "bad-receipt-signer"])
def test_bad_input_changes_nothing(bond_cli, mia, chain, settlement, ubt, argv, code, match):
    block = chain.blocks.height
    bond_cli.fails(*argv, code=code, match=match, env=PW)
    assert chain.blocks.height == block, "a transaction was mined"
    assert settlement.matchers(mia)[0] == 0 and ubt.balanceOf(mia) == 12_000 * UBT
