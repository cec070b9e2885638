"""`underbid demo`: the whole story, on the test chain and on a devnet of its own."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx

from underbid.devnet.node import port_in_use
from underbid.protocol.units import base_units

from ..matcher.conftest import wait_until
from .conftest import Cli, free_port


def _check_story(out: dict) -> None:
    assert out["conserved"] is True
    assert all(check["ok"] for check in out["checks"].values()), out["checks"]
    assert set(out["checks"]) == {"credits", "escrow backed", "UBT", "stake backed"}
    assert len(out["prices"]) == 2  # two markets, one uniform price each
    # Both markets have competition: a losing bid (the cheapest left unused) set each price, below
    # every winning buyer's max, and each price comes with that reason.
    assert set(out["price_rules"].values()) == {"cheapest unused bid"}
    for market, price in out["prices"].items():
        assert out["price_reasons"][market].startswith(f"{price['value']} = the cheapest bid left unused")
    assert {lease["provider_name"] for lease in out["leases"]} <= {"provider-1", "provider-2", "provider-4"}
    assert {base_units(lease["price"]) for lease in out["leases"]} == {base_units(p) for p in out["prices"].values()}
    # the silent provider was reported
    assert base_units(out["fault"]["slashed"]) > 0 and base_units(out["fault"]["burned"]) > 0
    assert out["claims"] and all(base_units(v) > 0 for v in out["claims"].values())
    assert out["early_close"] and all(base_units(c["refunded"]) > 0 for c in out["early_close"])
    # The providers' heartbeat batches still named the leases the buyer closed: skipped, not reverted.
    closed = {c["lease"] for c in out["early_close"]}
    assert {s["lease"] for s in out["skipped_heartbeats"]} == closed
    assert all(s["reason"] == "closed" for s in out["skipped_heartbeats"])
    assert out["redemptions"] and all(base_units(v) > 0 for v in out["redemptions"].values())
    assert set(out["balances"]) >= {f"provider-{i}" for i in range(1, 6)} | {f"buyer-{i}" for i in range(1, 4)}


def test_demo_on_the_test_chain(cli):
    out = cli("demo", "--minutes", "3")
    _check_story(out)


def test_demo_human_output(cli):
    result = cli.run("demo", "--minutes", "3")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    for needle in ("Providers bid in two markets", "uniform prices", "leases opened", "reported",
                   "closed lease", "redeemed", "balances before → after", "conservation", "credits and UBT conserved",
                   "bound to the matcher", "skipped (closed)", "announced escrow withdrawals", "evm_increaseTime",
                   "why H100 us-east cleared there: 2.5 = the cheapest bid left unused",
                   "why A100 eu-west cleared there: 1.45 = the cheapest bid left unused",
                   "provider-1 (agent)", "provider-1's agent: bid 3 unit(s)"):
        assert needle in text, needle
    assert "VIOLATED" not in text


def test_devnet_up_demo_down(tmp_path):
    """The README's main job, on its own devnet: `devnet up`, `demo`, `devnet down`."""
    cli = Cli(env={
        "UNDERBID_DEVNET_DIR": str(tmp_path / "devnet"), "UNDERBID_HOME": str(tmp_path / "home"),
        "UNDERBID_RPC": None, "UNDERBID_MATCHER": None, "UNDERBID_DEPLOYMENT": None, "UNDERBID_ADMIN_TOKEN": None,
        "UNDERBID_ACCOUNT": None, "COLUMNS": "200",
    })
    port, matcher_port = free_port(), free_port()
    up = cli("devnet", "up", "--port", str(port), "--matcher-port", str(matcher_port))
    try:
        assert up["rpc"] == f"http://127.0.0.1:{port}" and up["state_file"] == str(tmp_path / "devnet" / "devnet.json")
        assert httpx.get(up["matcher_url"] + "/health").json()["status"] == "ok"
        book = json.loads((tmp_path / "devnet" / "local.json").read_text())
        assert book["chain_id"] == 31337
        assert cli("devnet", "status")["alive"] == {"anvil": True, "matcher": True}
        # Commands find the devnet's RPC, matcher and address book without any option.
        assert base_units(cli("account", "show", "dev:7")["ubt"]) == 5_000 * 10**18
        story = cli("demo", "--minutes", "3")
        _check_story(story)
        # The README's explorer URL: the page and its Chart.js come from the matcher; the demo's markets
        # are labelled and priced.
        page = httpx.get(up["matcher_url"] + "/explorer")
        assert page.status_code == 200 and "/explorer/static/vendor/chart.umd.min.js" in page.text
        assert httpx.get(up["matcher_url"] + "/explorer/static/vendor/chart.umd.min.js").status_code == 200
        markets = httpx.get(up["matcher_url"] + "/explorer/api/markets").json()
        assert len(markets) >= 2 and all(m["rounds_traded"] >= 1 and not m["label"].startswith("0x") for m in markets)
        # A second `up` refuses while this one runs.
        cli.fails("devnet", "up", "--port", str(free_port()), "--matcher-port", str(free_port()), code=1,
                  match="already up")
        # A crashed matcher: the advice of the unreachable error (`devnet up`) restarts it on its
        # port with its store, so the demo's settled round is still there.
        os.kill(up["matcher_pid"], signal.SIGKILL)
        # SIGKILL is delivered asynchronously: until the dying process's socket is closed, a
        # connection can still be taken into its backlog and then reset (a ReadError, not refused).
        wait_until("the killed matcher's port is closed", lambda: not port_in_use(matcher_port), timeout=10)
        cli.fails("market", "list", code=1, match="`underbid devnet up` (re)starts it")
        again = cli("devnet", "up")
        assert again["outcome"] == "restarted matcher" and again["matcher_pid"] != up["matcher_pid"]
        assert again["matcher_url"] == up["matcher_url"] and again["anvil_pid"] == up["anvil_pid"]
        assert httpx.get(f"{up['matcher_url']}/rounds/{story['round']}").status_code == 200
        up = again
    finally:
        down = cli("devnet", "down")
    assert down["stopped"] == {"matcher": True, "anvil": True}
    assert not port_in_use(port) and not port_in_use(matcher_port)
    assert not (tmp_path / "devnet" / "devnet.json").exists()
    assert cli("devnet", "down")["stopped"] is None
    for pid in (up["anvil_pid"], up["matcher_pid"]):
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.parent.exists() or stat.read_text().split(")")[1].split()[0] == "Z"
