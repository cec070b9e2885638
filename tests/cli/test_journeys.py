"""A complete buyer journey and a complete provider journey, through the real CLI, against a live
anvil and a real matcher process."""

from __future__ import annotations

from underbid.protocol.units import base_units

from ..conftest import UBC, UBT
from .conftest import DATA, H100_8

PW = {"UNDERBID_PASSWORD": "correct horse"}


def test_buyer_journey(cli, settlement, credit, ubt, matcher):
    # A new encrypted account, funded from the devnet faucet.
    made = cli("account", "new", "alice", env=PW)
    alice = made["address"]
    assert made["source"] == "underbid" and made["keystore"].endswith("alice.json")
    assert [a["alias"] for a in cli("account", "list")] == ["alice"]
    cli("devnet", "fund", "alice", "--ubt", "500")
    me = ["--account", "alice"]

    # Burn UBT for credits (the command approves the BME itself), deposit them.
    minted = cli("credits", "mint", "--amount", "100", *me, env=PW)
    assert base_units(minted["credits_minted"]) == 199_500_000  # 100 UBT at 2 USD minus 25 bps
    assert minted["spread_bps"] == 25
    assert ubt.balanceOf(alice) == 400 * UBT
    deposited = cli("escrow", "deposit", "--amount", "150", *me, env=PW)
    assert settlement.escrowOf(alice) == (150 * UBC, 0)
    # The first deposit bound the account to the matcher (its address from the matcher's /health).
    assert deposited["bound"]["matcher"] == matcher.address and deposited["bound"]["immediate"]
    assert settlement.boundMatcherOf(alice) == matcher.address
    assert cli("escrow", "deposit", "--amount", "0.5", *me, env=PW)["bound"] is None  # already bound: no transaction
    cli("escrow", "withdraw", "--amount", "0.5", *me, env=PW)  # announced; completed with the rest below

    # A provider (a devnet key) stakes and bids; the buyer orders from an Akash SDL file.
    cli("devnet", "fund", "dev:5", "--ubt", "1000")
    cli("provider", "register", "--metadata", "https://gpu.example/p1.json", "--account", "dev:5")
    cli("provider", "stake", "--amount", "400", "--account", "dev:5")
    bid = cli("bid", "create", "--market", H100_8, "--capacity", "4", "--price", "1.50", "--valid", "2h",
              "--account", "dev:5")
    assert bid["status"] == "open" and bid["spec"] == H100_8
    assert settlement.boundMatcherOf(cli("account", "show", "dev:5")["address"]) == matcher.address
    order = cli("order", "create", "--sdl", DATA / "h100.yaml", "--hours", "24", "--max-price", "2.10", *me, env=PW)
    assert order["spec"] == H100_8 and order["units"] == 2  # the SDL's count
    assert base_units(order["max_cost"]) == 2 * 2_100_000 * 24
    listed = cli("order", "list", *me, env=PW)
    assert [(o["digest"], o["status"]) for o in listed] == [(order["digest"], "open")]
    markets = cli("market", "list")
    assert markets[0]["spec"] == H100_8 and markets[0]["open_orders"] == 1 and markets[0]["open_bids"] == 1

    # The matcher closes the round: one lease, at one uniform price.
    report = cli("matcher", "close-round")
    assert report["state"] == "confirmed" and report["matches"] == 1
    price = base_units(next(iter(report["prices"].values())))
    assert 1_500_000 <= price <= 2_100_000
    [lease] = cli("lease", "list", *me, env=PW)
    cost = 2 * price * 24
    assert (lease["buyer"], lease["units"], base_units(lease["price"]), base_units(lease["cost"]), lease["status"]) == (
        alice,
        2,
        price,
        cost,
        "running",
    )
    assert settlement.escrowOf(alice) == (150 * UBC + UBC // 2 - cost, cost)
    assert cli("order", "list", *me, env=PW)[0]["status"] == "filled"
    assert lease["end_reason"] is None and lease["heartbeat_due"] == lease["reportable_at"]
    # The buyer's table fits 80 columns and names the provider; the provider's says when to heartbeat.
    for who, other in ((me, lease["provider"]), (["--account", "dev:5"], alice)):
        shown = cli.run("lease", "list", *who, env={**PW, "COLUMNS": "80"}).stdout
        assert all(len(line) <= 80 for line in shown.splitlines()), shown
        assert other[:6] in shown and "heartbeat due" in " ".join(shown.split()), shown

    # Time passes (the provider heartbeats), then the buyer closes early and gets the rest back.
    for _ in range(3):
        assert cli("lease", "heartbeat", "--account", "dev:5")["leases"] == [lease["id"]]
        cli("devnet", "advance", "50s", "--no-price")
    status = cli("status", *me, env=PW)
    assert base_units(status["escrow_locked"]) == cost and base_units(status["leases"][0]["accrued"]) > 0
    assert status["binding"]["matcher"] == matcher.address and not status["binding"]["pending"]
    closed = cli("lease", "close", lease["id"][:12], *me, env=PW)
    assert base_units(closed["paid_to_provider"]) + base_units(closed["refunded"]) == cost
    assert base_units(closed["paid_to_provider"]) > 0
    assert settlement.escrowOf(alice) == (150 * UBC + UBC // 2 - base_units(closed["paid_to_provider"]), 0)
    assert cli("lease", "list", *me, env=PW) == []
    [ended] = cli("lease", "list", "--all", *me, env=PW)
    assert (ended["status"], ended["end_reason"]) == ("closed", "closed by buyer")
    assert "closed by buyer" in " ".join(cli.run("lease", "list", "--all", "--wide", *me, env=PW).stdout.split())

    # A second order is cancelled on chain by its nonce, in two steps: a request, then the void after the notice.
    second = cli("order", "create", "--market", H100_8, "--units", "1", "--hours", "1", "--max-price", "3", *me, env=PW)
    requested = cli("order", "cancel", second["digest"][:10], *me, env=PW)
    assert (requested["nonce"], requested["step"], requested["ready_in"]) == (second["nonce"], "requested", 30)
    assert settlement.cancelRequestedAt(alice, second["nonce"]) != 0 and not settlement.isNonceUsed(
        alice, second["nonce"]
    )
    assert {o["digest"]: o["status"] for o in cli("order", "list", *me, env=PW)}[second["digest"]] == "cancel requested"
    cli.fails("order", "cancel", second["digest"][:10], *me, code=1, match="the notice is not over (ready in", env=PW)
    cli("devnet", "advance", "30s", "--no-price")
    cancelled = cli("order", "cancel", second["digest"][:10], *me, env=PW)
    assert cancelled["step"] == "cancelled" and settlement.nonceState(alice, second["nonce"]) == (False, True)
    assert {o["digest"]: o["status"] for o in cli("order", "list", *me, env=PW)}[second["digest"]] == "cancelled"
    cli.fails("order", "cancel", second["digest"][:10], *me, code=1, match="is already cancelled", env=PW)

    # Everything back out: the pending withdrawal (0.5) is completed, the rest announced and completed after
    # the notice; then the credits are redeemed (oracle price re-posted first).
    done = cli("escrow", "withdraw", *me, env=PW)
    assert (done["step"], base_units(done["withdrawn"])) == ("withdrawn", UBC // 2)
    free = settlement.escrowOf(alice)[0]
    announced = cli("escrow", "withdraw", *me, env=PW)
    assert (announced["step"], base_units(announced["requested"]), announced["ready_in"]) == ("requested", free, 30)
    assert settlement.escrowOf(alice)[0] == free and settlement.availableEscrow(alice) == 0
    result = cli.run("escrow", "withdraw", *me, env=PW)
    err = result.stderr.strip()
    assert result.exit_code == 1 and err.startswith("error: NoticeNotOver(readyAt=") and "\n" not in err
    assert "the notice is not over (ready in 30 s)" in err or "the notice is not over (ready in 29 s)" in err
    cli("devnet", "advance", "30s")
    assert base_units(cli("escrow", "withdraw", "--complete", *me, env=PW)["withdrawn"]) == free
    assert settlement.escrowOf(alice) == (0, 0) and settlement.pendingWithdrawal(alice) == (0, 0)
    held = credit.balanceOf(alice)
    redeemed = cli("credits", "redeem", "--amount", str(held / UBC), *me, env=PW)
    assert base_units(redeemed["credits_burned"]) == held and credit.balanceOf(alice) == 0
    bme = cli("bme")
    assert base_units(bme["total_ubt_burned"]) == 100 * UBT
    assert base_units(bme["total_ubt_minted"]) == base_units(redeemed["ubt_minted"])


def test_provider_journey(cli, settlement, ubt, tmp_path, chain):
    # Import a key from a file, with the password from a file.
    key_file, pw_file = tmp_path / "key.txt", tmp_path / "pw.txt"
    key_file.write_text("0x" + "42" * 32 + "\n")
    pw_file.write_text("s3cret\n")
    pw = ["--password-file", pw_file]
    bob = cli("account", "import", "bob", "--key-file", key_file, *pw)["address"]
    me = ["--account", "bob", *pw]
    cli("devnet", "fund", bob, "--ubt", "1000")

    cli("provider", "register", "--metadata", "https://bob.example/meta.json", *me)
    staked = cli("provider", "stake", "--amount", "500", *me)
    assert base_units(staked["staked"]) == 500 * UBT and base_units(staked["free"]) == 500 * UBT
    assert staked["bound"]["immediate"] and settlement.boundMatcherOf(bob) == staked["bound"]["matcher"]
    bid = cli("bid", "create", "--market", H100_8, "--capacity", "3", "--price", "1.25", "--max-hours", "12", *me)
    assert bid["capacity"] == 3 and base_units(bid["price"]) == 1_250_000 and bid["max_duration"] == 12 * 3600
    assert bid["digest"].startswith("0x") and bid["round"] >= 1

    # A devnet buyer orders 2 of the 3 units; the round settles.
    buyer = ["--account", "dev:8"]
    cli("devnet", "fund", "dev:8", "--ubt", "100")
    cli("credits", "mint", "--ubt", "50", *buyer)
    cli("escrow", "deposit", "--amount", "60", *buyer)
    cli("order", "create", "--market", H100_8, "--units", "2", "--hours", "6", "--max-price", "2", *buyer)
    assert cli("matcher", "close-round")["matches"] == 1
    assert cli("bid", "list", *me)[0]["status"] == "partly filled"
    [lease] = cli("lease", "list", "--role", "provider", *me)
    assert lease["provider"] == bob and base_units(lease["collateral"]) == 2 * 100 * UBT
    assert base_units(cli("provider", "show", *me)["locked"]) == 200 * UBT

    # Heartbeats keep the lease paid; claim collects what accrued.
    beat = cli("lease", "heartbeat", *me)
    assert beat["leases"] == [lease["id"]]
    cli("devnet", "advance", "50s", "--no-price")
    result = cli.run("heartbeat", "--every", "1", "--count", "2", *me)
    assert result.exit_code == 0 and result.stdout.count("heartbeat for 1 lease") == 2
    claim = cli("lease", "claim", *me)
    assert base_units(claim["claimed"]) > 0 and claim["closed"] == []
    assert settlement.getLease(bytes.fromhex(lease["id"][2:])).paidUntil > 0

    # Bob goes silent: after interval + grace anyone can report him and is paid for it.
    cli("devnet", "advance", "200s", "--no-price")
    reportable = cli("report")
    assert [v["id"] for v in reportable] == [lease["id"]]
    # Too late to heartbeat: the provider is told why its listed lease gets none.
    late = cli("lease", "heartbeat", *me)
    assert late["leases"] == [] and late["not_running"] == [{"lease": lease["id"], "status": "faulty"}]
    assert "faulty (reportable" in " ".join(cli.run("lease", "heartbeat", *me).stdout.split())
    reporter = "0x976EA74026E726554dB657fA54763abd0C3a0aa9"  # dev:6
    before = ubt.balanceOf(reporter)
    reported = cli("report", "--lease", lease["id"][:14], "--account", "dev:6")
    assert base_units(reported["slashed"]) == 100 * UBT  # 50% of the 200 UBT collateral
    assert ubt.balanceOf(reporter) - before == base_units(reported["to_reporter"]) == 10 * UBT
    shown = cli("provider", "show", *me)
    assert base_units(shown["staked"]) == 400 * UBT and base_units(shown["locked"]) == 0

    # The rest of the bid is cancelled (request, notice, void); the stake unbonds and is withdrawn after
    # the unbonding period.
    assert cli("bid", "cancel", bid["digest"], *me)["step"] == "requested"
    assert cli("bid", "list", *me)[0]["status"] == "cancel requested"
    cli("devnet", "advance", "31s", "--no-price")
    assert cli("bid", "cancel", bid["digest"], *me)["step"] == "cancelled"
    assert cli("bid", "list", *me)[0]["status"] == "cancelled"
    unstake = cli("provider", "unstake", "--amount", "400", *me)
    assert unstake["unbonding_left"] == 600
    shown = cli("provider", "show", *me)
    still_staked = (base_units(shown["staked"]), base_units(shown["unbonding"]), base_units(shown["available"]))
    assert still_staked == (400 * UBT, 400 * UBT, 0)
    cli.fails("provider", "unstake", "--amount", "1", *me, code=1, match="InsufficientFreeStake(")
    cli.fails("provider", "withdraw", *me, code=1, match="still unbonding")
    cli("devnet", "advance", "10m", "--no-price")
    before = ubt.balanceOf(bob)
    assert base_units(cli("provider", "withdraw", *me)["withdrawn"]) == 400 * UBT
    assert ubt.balanceOf(bob) - before == 400 * UBT


def test_ape_accounts_are_read(cli, tmp_path):
    """Accounts in ape's folder (same keystore format) work; `--ape` writes there."""
    ape_dir = {"APE_DATA_FOLDER": str(tmp_path / "ape"), **PW}
    made = cli("account", "new", "carol", "--ape", env=ape_dir)
    assert made["source"] == "ape" and made["keystore"] == str(tmp_path / "ape" / "accounts" / "carol.json")
    listed = cli("account", "list", env=ape_dir)
    assert [(a["alias"], a["source"]) for a in listed] == [("carol", "ape")]
    shown = cli("account", "show", "carol", env=ape_dir)
    assert shown["address"] == made["address"] and base_units(shown["eth"]) == 0
    # The file is plain Web3 Secret Storage: eth-account decrypts it.
    import json

    from eth_account import Account

    keyfile = json.loads((tmp_path / "ape" / "accounts" / "carol.json").read_text())
    assert Account.from_key(Account.decrypt(keyfile, PW["UNDERBID_PASSWORD"])).address == made["address"]


def test_challenge_of_a_correct_round_is_refused(cli, chain, matcher):
    """A provider's challenge goes to the MatcherCourt with its matcher receipt and a witness lease found on
    chain; when the round was cleared correctly the court's named error comes back as one line, nothing sent."""
    for dev in ("dev:5", "dev:6"):
        cli("devnet", "fund", dev, "--ubt", "300")
        cli("provider", "register", "--metadata", f"https://{dev[4:]}.example", "--account", dev)
        cli("provider", "stake", "--amount", "200", "--account", dev)
    cheap = cli("bid", "create", "--market", H100_8, "--capacity", "2", "--price", "1.25", "--account", "dev:5")
    assert cheap["receipt"]["bidHash"] == cheap["digest"] and cheap["receipt"]["round"] == cheap["round"]
    assert cheap["receipt"]["matcher"] == matcher.address
    assert cheap["receipt_valid"] is True  # signed by the bonded matcher, for this bid
    cli("bid", "create", "--market", H100_8, "--capacity", "2", "--price", "1.40", "--account", "dev:6")
    cli("devnet", "fund", "dev:8", "--ubt", "100")
    cli("credits", "mint", "--ubt", "50", "--account", "dev:8")
    cli("escrow", "deposit", "--amount", "60", "--account", "dev:8")
    cli("order", "create", "--market", H100_8, "--units", "3", "--hours", "2", "--max-price", "2", "--account", "dev:8")
    assert cli("matcher", "close-round")["matches"] == 2

    block = chain.blocks.height
    # The cheap bid was filled completely, so a pricier winner proves nothing (neither spare unit nor swap).
    cli.fails(
        "challenge", "--bid", cheap["digest"][:12], "--account", "dev:5", code=1, match="BidFullyFilled(bidDigest="
    )
    # The pricier bid has no pricier witness in its round.
    pricey = cli("bid", "list", "--account", "dev:6")[0]
    cli.fails("challenge", "--bid", pricey["digest"], "--account", "dev:6", code=1, match="nothing to challenge")
    assert chain.blocks.height == block


def test_price_ladder(cli):
    """A provider offers a unit at each of three prices in one request; the cheapest rungs fill."""
    provider = ["--account", "dev:10"]
    cli("devnet", "fund", "dev:10", "--ubt", "1000")
    cli("provider", "register", "--metadata", "https://ladder.example/p.json", *provider)
    cli("provider", "stake", "--amount", "300", *provider)  # covers three units
    rungs = cli("bid", "ladder", "--market", H100_8, "--capacity", "1", "--price", "1.90", "--price", "1.20",
                "--price", "1.50", *provider)
    # One bid per rung, cheapest first, consecutive nonces, each with a receipt that can back a challenge.
    assert [base_units(r["price"]) for r in rungs] == [1_200_000, 1_500_000, 1_900_000]
    assert [r["nonce"] - rungs[0]["nonce"] for r in rungs] == [0, 1, 2]
    assert all(r["status"] == "open" and r["receipt_valid"] and r["round"] >= 1 for r in rungs)
    assert sorted(b["digest"] for b in cli("bid", "list", *provider)) == sorted(r["digest"] for r in rungs)

    # A buyer needs two units: the two cheapest rungs fill, at the uniform price of the unused one.
    buyer = ["--account", "dev:11"]
    cli("devnet", "fund", "dev:11", "--ubt", "100")
    cli("credits", "mint", "--ubt", "50", *buyer)
    cli("escrow", "deposit", "--amount", "60", *buyer)
    cli("order", "create", "--market", H100_8, "--units", "2", "--hours", "6", "--max-price", "2", *buyer)
    report = cli("matcher", "close-round")
    assert report["matches"] == 2 and base_units(next(iter(report["prices"].values()))) == 1_900_000
    status = {b["digest"]: b["status"] for b in cli("bid", "list", *provider)}
    assert [status[r["digest"]] for r in rungs] == ["filled", "filled", "open"]


def test_bind_journey(cli, settlement, matcher):
    """`account bind`: an unbound account binds at once; moving to another matcher waits for the notice,
    and meanwhile its orders are refused before anything is posted."""
    me = ["--account", "dev:13"]
    cli("devnet", "fund", "dev:13", "--ubt", "100")
    cli("credits", "mint", "--ubt", "50", *me)
    deposited = cli("escrow", "deposit", "--amount", "40", "--no-bind", *me)
    assert deposited["bound"] is None
    address = cli("account", "show", "dev:13")["address"]
    shown = cli("account", "show", "dev:13")
    assert shown["binding"]["matcher"] is None and not shown["binding"]["pending"]
    order = ("order", "create", "--market", H100_8, "--units", "1", "--hours", "2", "--max-price", "2", *me)
    cli.fails(*order, code=1, match="AccountNotBound(account=")

    # Bind to the matcher at --matcher (its address from /health): at once.
    result = cli.run("account", "bind", *me)
    assert result.exit_code == 0, result.stderr
    assert f"bound {address} to matcher {matcher.address}" in " ".join(result.stdout.split())
    assert settlement.boundMatcherOf(address) == matcher.address
    assert cli("account", "bind", *me)["changed"] is False  # already bound: nothing sent
    text = " ".join(cli.run("status", *me).stdout.split())
    assert f"matcher {matcher.address}" in text
    assert cli(*order)["status"] == "open"

    # Moving to another matcher is announced: effective after the 30 s notice; no orders meanwhile.
    other = "0x" + "11" * 20
    moved = cli("account", "bind", other, *me)
    assert moved["changed"] and not moved["immediate"] and moved["pending"] and moved["change_left"] == 30
    assert moved["matcher"] == matcher.address and moved["next"].lower() == other
    status = cli("status", *me)
    assert status["binding"]["pending"] and status["binding"]["next"].lower() == other
    assert "changing to" in " ".join(cli.run("status", *me).stdout.split())
    cli.fails(*order, code=1, match="pending matcher change")
    cli("devnet", "advance", "30s", "--no-price")
    assert settlement.boundMatcherOf(address).lower() == other
    cli.fails(*order, code=1, match=f"AccountNotBound(account={address}")
    cli.fails("account", "bind", "0x1234", *me, code=2, match="is not an address")


def test_heartbeat_batch_skips_a_closed_lease(cli, settlement):
    """A provider heartbeats two leases in one transaction after a buyer closed one of them: nothing
    reverts, the closed lease is reported as skipped and the other one is heartbeated."""
    provider = ["--account", "dev:14"]
    cli("devnet", "fund", "dev:14", "--ubt", "500")
    cli("provider", "register", "--metadata", "https://p14.example", *provider)
    cli("provider", "stake", "--amount", "200", *provider)
    cli("bid", "create", "--market", H100_8, "--capacity", "2", "--price", "1", *provider)
    for dev in ("dev:15", "dev:16"):
        cli("devnet", "fund", dev, "--ubt", "100")
        cli("credits", "mint", "--ubt", "50", "--account", dev)
        cli("escrow", "deposit", "--amount", "60", "--account", dev)
        cli("order", "create", "--market", H100_8, "--units", "1", "--hours", "2", "--max-price", "2", "--account", dev)
    assert cli("matcher", "close-round")["matches"] == 2
    leases = cli("lease", "list", *provider)
    assert len(leases) == 2
    closed = next(v for v in leases if v["buyer"] == cli("account", "show", "dev:15")["address"])
    running = next(v for v in leases if v["id"] != closed["id"])
    cli("devnet", "advance", "20s", "--no-price")
    cli("lease", "close", closed["id"], "--account", "dev:15")

    beat = cli("lease", "heartbeat", closed["id"], running["id"], *provider)
    assert beat["leases"] == [running["id"]] and beat["skipped"] == [{"lease": closed["id"], "reason": "closed"}]
    result = cli.run("lease", "heartbeat", closed["id"][:14], running["id"][:14], *provider)
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "heartbeat for 1 lease(s)" in text and f"skipped lease {closed['id'][:12]}" in text
    assert "it is closed" in text
    # The loop keeps going with the lease closed: it heartbeats what still runs, every round.
    result = cli.run("heartbeat", "--every", "1", "--count", "2", *provider)
    assert result.exit_code == 0 and result.stdout.count("heartbeat for 1 lease") == 2, result.stderr
    # Claims skip the closed lease too.
    claim = cli("lease", "claim", closed["id"], running["id"], *provider)
    assert base_units(claim["claimed"]) > 0 and claim["skipped"] == [{"lease": closed["id"], "reason": "closed"}]
