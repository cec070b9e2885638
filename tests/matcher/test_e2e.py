"""End to end: providers and buyers post through the HTTP API, a round clears and settles on anvil."""

from ..conftest import A100, H100, HOUR, UBC
from .conftest import on_both_stores, order_body

# Intake, the round, its settlement and recovery all go through the store.
pytestmark = on_both_stores


def test_round_end_to_end(accounts, market, settlement, matcher, matcher_process, chain):
    m = market
    buyers, providers = list(accounts[10:13]), list(accounts[20:25])
    for b in buyers:
        m.fund_buyer(b, 200 * UBC)
    for p in providers:
        m.stake_provider(p, 4)

    bids = [
        m.bid(providers[0], market=H100, capacity=2, price=int(1.5 * UBC)),
        m.bid(providers[1], market=H100, capacity=2, price=int(1.8 * UBC)),
        m.bid(providers[2], market=H100, capacity=4, price=int(2.4 * UBC)),
        m.bid(providers[3], market=A100, capacity=2, price=int(1.1 * UBC)),
        m.bid(providers[4], market=A100, capacity=2, price=int(1.3 * UBC)),
    ]
    orders = [
        m.order(buyers[0], market=H100, units=2, duration=2 * HOUR, max_price=3 * UBC),
        m.order(buyers[1], market=H100, units=1, duration=HOUR, max_price=int(2.5 * UBC)),
        m.order(buyers[2], market=A100, units=1, duration=3 * HOUR, max_price=2 * UBC),
    ]
    with matcher_process.client() as http:
        for bid, sig in bids:
            r = http.post("/bids", json=order_body(bid, sig))
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == "0x" + bid.digest(m.domain).hex()
        for order, sig in orders:
            r = http.post("/orders", json=order_body(order, sig, spec=None))
            assert r.status_code == 201, r.text

        before = {b.address: settlement.escrowOf(b) for b in buyers}
        r = matcher_process.close_round()
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["state"] == "confirmed"
        round_id = report["round_id"]

        stored = http.get(f"/rounds/{round_id}").json()
        assert stored["state"] == "confirmed"
        matches = stored["clearing"]["matches"]
        prices = {k: int(v) for k, v in stored["clearing"]["prices"].items()}
        # Uniform price: H100's cheapest entirely unused bid is provider 2's 2.4 UBC, capped by
        # the served orders' max prices (2.5); A100's is provider 4's 1.3 UBC.
        assert prices == {H100: int(2.4 * UBC), A100: int(1.3 * UBC)}

        # The leases on chain are exactly the clearing output.
        logs = list(settlement.LeaseOpened.range(chain.blocks.height - 5, chain.blocks.height + 1))
        on_chain = sorted(
            ("0x" + bytes(lg.orderDigest).hex(), "0x" + bytes(lg.bidDigest).hex(), lg.units, lg.price) for lg in logs
        )
        expected = sorted((mm["order"], mm["bid"], mm["units"], prices[mm["market"]]) for mm in matches)
        assert on_chain == expected
        assert settlement.clearingPrice(matcher, round_id, H100) == prices[H100]
        assert all(lg.matcher == matcher.address and lg.round == round_id for lg in logs)

        # Balances moved as expected: each buyer's locked escrow is what its leases cost.
        for order, _ in orders:
            cost = sum(mm["units"] * prices[mm["market"]] * order.duration // HOUR
                       for mm in matches if mm["order"] == "0x" + order.digest(m.domain).hex())
            free0, locked0 = before[order.buyer]
            assert settlement.escrowOf(order.buyer) == (free0 - cost, locked0 + cost)

        # Fills are recorded: every order is completely filled; the stored view agrees.
        for order, _ in orders:
            view = http.get(f"/orders/0x{order.digest(m.domain).hex()}").json()
            assert view["status"] == "filled" and view["remaining"] == 0
        cheap = http.get(f"/bids/0x{bids[0][0].digest(m.domain).hex()}").json()
        assert cheap["filled"] == 2 and cheap["status"] == "filled"

        markets = {row["market"]: row for row in http.get("/markets").json()}
        assert markets[H100]["last_price"] == prices[H100]
        assert http.get("/health").json()["status"] == "ok"
        assert "/orders" in http.get("/openapi.json").json()["paths"]
