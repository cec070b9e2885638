"""The market explorer page in a real headless Chromium (Debian's, driven by Playwright), served by a
real matcher process over HTTP against the test anvil and contracts, after two settled rounds.

The chart's data is read from the page (Chart.js's own objects) and compared with what the rounds
settled; the JSON endpoints' bad parameters are refused naming the field. `UNDERBID_EXPLORER_SHOT`
names a file to keep the page's screenshot in (docs/explorer.png is made that way).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from underbid.protocol.markets import canonical_spec

from ..conftest import A100, H100, HOUR, UBC
from .conftest import order_body

CHROMIUM = "/usr/bin/chromium"
#: Launch flags that work on these machines (no sandbox as root, no network chatter of its own).
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
H100_SPEC = "gpu=nvidia-h100;vram=80;gpus=8;region=us-east"
A100_SPEC = "gpu=nvidia-a100;vram=80;gpus=8;region=eu-west"


def _post(http: httpx.Client, path: str, signed, spec: str) -> None:
    message, signature = signed
    response = http.post(path, json=order_body(message, signature, spec=canonical_spec(spec)))
    assert response.status_code == 201, response.text


def test_the_explorer_page_shows_two_settled_rounds(accounts, market, settlement, matcher_process, chain, tmp_path):
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: scripts/chromium.sh installs it (as root)"
    m = market
    buyers, providers = list(accounts[10:13]), list(accounts[20:24])
    for b in buyers:
        m.fund_buyer(b, 300 * UBC)
    for p in providers:
        m.stake_provider(p, 6)

    with matcher_process.client() as http:
        # Round 1: H100 has three bids, the 2.40 one left unused (it sets the price); A100 trades too.
        for signed in (m.bid(providers[0], market=H100, capacity=2, price=int(1.5 * UBC)),
                       m.bid(providers[1], market=H100, capacity=2, price=int(1.8 * UBC)),
                       m.bid(providers[2], market=H100, capacity=2, price=int(2.4 * UBC))):
            _post(http, "/bids", signed, H100_SPEC)
        _post(http, "/bids", m.bid(providers[3], market=A100, capacity=2, price=int(1.1 * UBC)), A100_SPEC)
        _post(http, "/orders", m.order(buyers[0], market=H100, units=3, duration=HOUR, max_price=3 * UBC), H100_SPEC)
        _post(http, "/orders", m.order(buyers[1], market=A100, units=1, duration=HOUR, max_price=2 * UBC), A100_SPEC)
        first = matcher_process.close_round().json()
        assert first["state"] == "confirmed", first

        # Round 2: H100 only, against what round 1 left plus a fresh bid and two orders.
        _post(http, "/bids", m.bid(providers[0], market=H100, capacity=2, price=int(2.1 * UBC)), H100_SPEC)
        _post(http, "/orders", m.order(buyers[2], market=H100, units=2, duration=HOUR, max_price=int(2.6 * UBC)),
              H100_SPEC)
        _post(http, "/orders", m.order(buyers[0], market=H100, units=1, duration=HOUR, max_price=int(1.9 * UBC)),
              H100_SPEC)
        second = matcher_process.close_round().json()
        assert second["state"] == "confirmed", second
        settled = {first["round_id"]: first["prices"], second["round_id"]: second["prices"]}

        # Provider 0 heartbeats its leases in time; the others miss theirs, and one lease of provider 1
        # is reported: the uptime table counts heartbeats, the fault report and the overdue heartbeats.
        leases = list(settlement.LeaseOpened.range(0, chain.blocks.height + 1))
        lease_provider = {bytes(lg.leaseId): lg.event_arguments["provider"] for lg in leases}
        own = [lease for lease, provider in lease_provider.items() if provider == providers[0].address]
        reported = next(lease for lease, provider in lease_provider.items() if provider == providers[1].address)
        assert own
        overdue_after = m.params.heartbeat_interval + m.params.heartbeat_grace + 1
        chain.mine(1, timestamp=chain.pending_timestamp + overdue_after // 2)
        settlement.heartbeat(own, sender=providers[0])
        chain.mine(1, timestamp=chain.pending_timestamp + overdue_after // 2 + 2)
        settlement.reportFault(reported, sender=accounts[30])

        # Bad parameters are 4xx naming the field; a market that never traded is a 404 naming it.
        for path, status, field in (("/explorer/api/book?market=0x12", 422, "market"),
                                    ("/explorer/api/book?market=0x" + "ab" * 32, 404, "market"),
                                    ("/explorer/api/prices?market=0x" + "ab" * 32, 404, "market"),
                                    ("/explorer/api/prices?market=" + H100 + "&rounds=0", 422, "rounds"),
                                    ("/explorer/api/leases?limit=0", 422, "limit")):
            response = http.get(path)
            assert response.status_code == status, (path, response.text)
            assert response.json()["detail"][0]["field"] == field, (path, response.text)
        book = http.get(f"/explorer/api/book?market={H100}").json()
        documented = set(http.get("/openapi.json").json()["paths"])
        assert {f"/explorer/api/{name}" for name in ("markets", "prices", "book", "leases", "providers", "matcher")} \
            <= documented
        uptime = {row["provider"]: row for row in http.get("/explorer/api/providers").json()}
    assert set(uptime) == set(lease_provider.values())
    leases_of = Counter(lease_provider.values())
    assert uptime.pop(providers[0].address) == {
        "provider": providers[0].address, "leases": len(own), "heartbeats": len(own), "faults": 0, "missed": 0,
        "uptime": 1.0,
    }
    assert uptime[providers[1].address]["faults"] == 1
    assert all(row["faults"] + row["missed"] == leases_of[p] and row["uptime"] == 0 for p, row in uptime.items())

    expected_points = {
        market: [rid for rid, prices in sorted(settled.items()) if market in prices] for market in (H100, A100)
    }
    assert expected_points == {H100: [first["round_id"], second["round_id"]], A100: [first["round_id"]]}

    profile = tmp_path / "chromium-profile"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 940},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            failed: list[str] = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(matcher_process.url + "/explorer")
            page.wait_for_selector("body[data-loaded='true']", timeout=30_000)
            assert page.is_hidden("#error"), page.inner_text("#error")

            price_data = page.evaluate(
                "() => Chart.getChart('price-chart').data.datasets.map(d => ({label: d.label,"
                " rounds: d.data.map(p => p.x), prices: d.data.map(p => p.y)}))"
            )
            by_label = {d["label"]: d for d in price_data}
            assert set(by_label) == {"H100 80GB ×8 · us-east", "A100 80GB ×8 · eu-west"}
            h100, a100 = by_label["H100 80GB ×8 · us-east"], by_label["A100 80GB ×8 · eu-west"]
            assert h100["rounds"] == expected_points[H100] and a100["rounds"] == expected_points[A100]
            assert h100["prices"] == [settled[r][H100] / UBC for r in expected_points[H100]]
            # Each point, and each traded market's row, says why the round cleared at that price.
            points = page.evaluate(
                "() => Chart.getChart('price-chart').data.datasets.flatMap(d => d.data.map(p => [p.y, p.reason]))")
            assert len(points) == 3, points
            for price, reason in points:  # "2.4 = the cheapest bid left unused (…)": the point's price, then why
                shown, why = reason.split(" = ", 1)
                assert float(shown) == price and len(why) > 20, reason
            shown_markets = page.inner_text("#markets")
            traded = [m for m in httpx.get(matcher_process.url + "/explorer/api/markets").json() if m["last_price"]]
            assert len(traded) == 2
            for market in traded:
                assert market["last_price_reason"].split(" = ", 1)[1] in shown_markets

            curves = page.evaluate(
                "() => Object.fromEntries(Chart.getChart('book-chart').data.datasets.map(d => [d.label, d.data]))"
            )
            supply = next(v for k, v in curves.items() if k.startswith("supply"))
            demand = next(v for k, v in curves.items() if k.startswith("demand"))
            clearing = next(v for k, v in curves.items() if k.startswith("clearing price"))
            # Two corners per price level, as the JSON states the levels; the price line at round 2's price.
            assert len(supply) == 2 * len(book["supply"]) and len(demand) == 2 * len(book["demand"])
            assert supply[-1]["x"] == book["supply"][-1]["cumulative"] and len(book["supply"]) >= 2
            assert {p["y"] for p in clearing} == {settled[second["round_id"]][H100] / UBC}
            assert book["round"] == second["round_id"]

            lease_rows = page.locator("#leases tbody tr")
            assert lease_rows.count() == len(leases)
            assert "H100 80GB ×8 · us-east" in page.inner_text("#leases")
            shown_uptime = page.locator("#providers tbody td:last-child").all_inner_texts()
            assert sorted(shown_uptime) == sorted(["100.0 %"] + ["0.0 %"] * len(uptime))
            statuses = page.locator("#leases td[class^='status-']").all_inner_texts()
            assert sorted(statuses) == sorted(["faulted"] + ["running"] * len(own)
                                              + ["faulty"] * (len(leases) - len(own) - 1))
            assert "bonded" in page.inner_text("#standing")
            assert not failed, f"requests failed: {failed}"

            shot = tmp_path / "explorer.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("UNDERBID_EXPLORER_SHOT"):
                shutil.copy(shot, Path(os.environ["UNDERBID_EXPLORER_SHOT"]))
        finally:
            context.close()
