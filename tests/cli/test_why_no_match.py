"""Why no match, and why this price: one round over four markets on a live anvil, the real
contracts and a real matcher process over HTTP, read back through the CLI (`order list`,
`market list`, `matcher close-round`, `matcher round`), the matcher's API and the explorer's.

- us-east H100 ×8: bids at 1.50 and 2.10, orders at max 3.00 and 2.00. The 1.50 bid serves the
  3.00 order; the 2.10 bid is left unused and sets the price (a losing bid), which prices the
  2.00 order out although the 1.50 bid could have served it.
- us-west H100 ×8: one unit at 1.00; an order for 2 units at max 3.00 gets it (too few units
  offered for its second one) and an order at max 2.00 is outbid. Every bid was used: the best
  order left out, 2.00, sets the price.
- eu-west H100 ×8: one bid at 1.50 accepting leases of at most 1 h: an order for 2 h finds no
  bid long enough, an order for 1 h at max 1.00 finds the cheapest one above its max.
- ap-south A100 ×8: an order and no bid at all.
"""

from __future__ import annotations

import sqlite3

import httpx

from underbid.protocol.markets import market_id

from .conftest import H100_8

WEST = "gpu=nvidia-h100;vram=80;gpus=8;region=us-west"
EU = "gpu=nvidia-h100;vram=80;gpus=8;region=eu-west"
NO_BIDS = "gpu=nvidia-a100;vram=80;gpus=8;region=ap-south"


def _provider(cli, who: str, stake: str) -> list[str]:
    account = ["--account", who]
    cli("devnet", "fund", who, "--ubt", "1000")
    cli("provider", "register", "--metadata", f"https://{who.replace(':', '')}.example", *account)
    cli("provider", "stake", "--amount", stake, *account)
    return account


def _buyer(cli, who: str) -> list[str]:
    account = ["--account", who]
    cli("devnet", "fund", who, "--ubt", "100")
    cli("credits", "mint", "--amount", "50", *account)
    cli("escrow", "deposit", "--amount", "60", *account)
    return account


def _order(cli, account: list[str], market: str, units: int, hours: int, max_price: str) -> str:
    return cli("order", "create", "--market", market, "--units", str(units), "--hours", str(hours),
               "--max-price", max_price, *account)["digest"]


def _unmatched(cli, account: list[str]) -> dict[str, dict]:
    return {row["digest"]: row["unmatched"] for row in cli("order", "list", *account)}


def test_every_unmatched_order_is_told_why_and_every_price_has_its_reason(cli, cli_matcher):
    cheap, dear, short_bids = (_provider(cli, who, "300") for who in ("dev:22", "dev:23", "dev:24"))
    cli("bid", "create", "--market", H100_8, "--capacity", "1", "--price", "1.50", "--valid", "2h", *cheap)
    cli("bid", "create", "--market", H100_8, "--capacity", "1", "--price", "2.10", "--valid", "2h", *dear)
    cli("bid", "create", "--market", WEST, "--capacity", "1", "--price", "1.00", "--valid", "2h", *cheap)
    cli("bid", "create", "--market", EU, "--capacity", "1", "--price", "1.50", "--max-hours", "1",
        "--valid", "2h", *short_bids)

    winner, priced_out, greedy, outbid, picky = (_buyer(cli, f"dev:{n}") for n in range(25, 30))
    won = _order(cli, winner, H100_8, 1, 1, "3")
    out = _order(cli, priced_out, H100_8, 1, 1, "2")
    partly = _order(cli, greedy, WEST, 2, 1, "3")
    beaten = _order(cli, outbid, WEST, 1, 1, "2")
    too_long = _order(cli, picky, EU, 1, 2, "5")
    too_cheap = _order(cli, picky, EU, 1, 1, "1")
    lonely = _order(cli, picky, NO_BIDS, 1, 1, "5")

    report = cli("matcher", "close-round")
    assert report["state"] == "confirmed" and report["matches"] == 2
    east, west = market_id(H100_8), market_id(WEST)
    # A losing bid set the east price; in the west every bid was used and the best order left out set it.
    assert report["price_rules"] == {east: "cheapest unused bid", west: "best unserved order"}
    assert report["price_reasons"][east].startswith("2.1 = the cheapest bid left unused")
    assert report["price_reasons"][west].startswith("2 = the highest max price of an order left unserved")

    # Each order is told why, through `order list --json` (what a script reads) ...
    assert _unmatched(cli, winner) == {won: None}
    [why] = _unmatched(cli, priced_out).values()
    assert why["reason"] == "priced out" and why["round"] == report["round_id"]
    assert "1.5 could serve you" in why["detail"] and "2.1 UBC/unit-hour, above your max 2" in why["detail"]
    why = _unmatched(cli, greedy)[partly]
    assert (why["reason"], why["matched"], why["wanted"]) == ("too few units offered", 1, 2)
    assert why["line"].startswith(f"1 of 2 units matched in round {report['round_id']}: too few units offered")
    why = _unmatched(cli, outbid)[beaten]
    assert why["reason"] == "outbid" and why["matched"] == 0 and "went to orders that gain more" in why["detail"]
    picky_why = _unmatched(cli, picky)
    assert picky_why[too_long]["reason"] == "duration too long"
    assert "no bid accepts a lease of 2 h (the longest any bid accepts is 1 h)" in picky_why[too_long]["detail"]
    assert picky_why[too_cheap]["reason"] == "max price too low"
    assert "asks 1.5 UBC/unit-hour, above your max 1" in picky_why[too_cheap]["detail"]
    assert picky_why[lonely]["reason"] == "no bids" and picky_why[lonely]["wanted"] == 1

    # ... in the table a person reads ...
    table = cli.run("order", "list", *picky)
    assert table.exit_code == 0, table.stderr
    assert f"not matched in round {report['round_id']}: no bids: no bid was open in this market" in table.stdout
    assert "duration too long" in table.stdout and "max price too low" in table.stdout

    # ... and through the matcher's own API, where any order is shown.
    address = cli("account", "show", "dev:29")["address"]
    listed = httpx.get(f"{cli_matcher.url}/orders", params={"signer": address}).json()
    assert {o["digest"]: o["unmatched"]["reason"] for o in listed} == {
        too_long: "duration too long", too_cheap: "max price too low", lonely: "no bids"}
    assert httpx.get(f"{cli_matcher.url}/orders/{out}").json()["unmatched"]["reason"] == "priced out"
    assert httpx.get(f"{cli_matcher.url}/orders/{won}").json()["unmatched"] is None

    # Every price shown comes with its reason: `market list`, `matcher round` and the explorer.
    markets = {row["market"]: row for row in cli("market", "list")}
    assert markets[east]["last_price_rule"] == "cheapest unused bid"
    assert markets[west]["last_price_reason"].startswith("2 = the highest max price of an order left unserved")
    listing = cli.run("market", "list")
    assert (f"H100 80GB ×8 · us-east, round {report['round_id']}: 2.1 = the cheapest bid left unused"
            in listing.stdout), listing.stdout
    shown = cli.run("matcher", "round", str(report["round_id"]))
    assert "2.1 = the cheapest bid left unused" in shown.stdout and "us-west" in shown.stdout, shown.stdout
    history = httpx.get(f"{cli_matcher.url}/explorer/api/prices", params={"market": east}).json()
    assert [(p["price"], p["rule"]) for p in history["points"]] == [("2.1", "cheapest unused bid")]
    assert history["points"][0]["reason"].startswith("2.1 = the cheapest bid left unused")


def test_a_cancelled_order_shows_its_fill_and_is_no_longer_open(cli, settlement):
    """The partly filled order is cancelled: `order list` shows the unit that filled (not the units a
    void nonce can no longer fill), and `market list` stops counting it open at the request."""
    seller = _provider(cli, "dev:22", "300")
    cli("bid", "create", "--market", WEST, "--capacity", "1", "--price", "1.00", "--valid", "2h", *seller)
    buyer = _buyer(cli, "dev:25")
    digest = _order(cli, buyer, WEST, 2, 1, "3")
    assert cli("matcher", "close-round")["matches"] == 1
    west = market_id(WEST)
    assert {r["market"]: r["open_orders"] for r in cli("market", "list")}[west] == 1

    assert cli("order", "cancel", digest, *buyer)["step"] == "requested"
    assert {r["market"]: r["open_orders"] for r in cli("market", "list")}[west] == 0
    [row] = cli("order", "list", *buyer)
    assert (row["status"], row["filled"], row["matcher_status"]) == ("cancel requested", 1, "dropped")
    cli("devnet", "advance", "30s", "--no-price")
    assert cli("order", "cancel", digest, *buyer)["step"] == "cancelled"
    [row] = cli("order", "list", *buyer)
    assert (row["status"], row["filled"], row["units"]) == ("cancelled", 1, 2)
    assert row["unmatched"] is None  # nothing can match it any more: no reason is shown
    table = cli.run("order", "list", *buyer).stdout
    assert "cancelled" in table and "too few units" not in table


def test_a_store_from_before_the_reasons_is_carried_over(cli, cli_matcher):
    """A matcher restarted on a store whose messages table predates "why no match" adds the columns,
    shows its old orders with no reason yet, and tells them at the next round."""
    buyer = _buyer(cli, "dev:25")
    digest = _order(cli, buyer, NO_BIDS, 1, 1, "5")
    cli_matcher.stop()
    with sqlite3.connect(cli_matcher.db) as db:
        for column in ("unmatched_round", "unmatched_reason", "unmatched_detail", "unmatched_matched",
                       "unmatched_wanted"):
            db.execute(f"ALTER TABLE messages DROP COLUMN {column}")
        # Such a store also predates versioned migrations: it has no schema_version table.
        db.execute("DROP TABLE schema_version")
        assert not any(row[1].startswith("unmatched") for row in db.execute("PRAGMA table_info(messages)"))
    cli_matcher.start()
    [row] = cli("order", "list", *buyer)
    assert row["digest"] == digest and row["status"] == "open" and row["unmatched"] is None
    report = cli("matcher", "close-round")
    [row] = cli("order", "list", *buyer)
    assert (row["unmatched"]["reason"], row["unmatched"]["round"]) == ("no bids", report["round_id"])
