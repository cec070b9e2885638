"""Crash safety: SIGKILL the matcher at each dangerous point, restart it, and check that every
accepted message is still there and each round is settled on chain exactly once."""

import httpx
import pytest

from ..conftest import HOUR, UBC
from .conftest import order_body


@pytest.fixture
def matcher_db(store_url) -> str:
    """Intake, the round, its settlement and recovery all go through the store: both back ends.
    (A fixture with params, not `on_both_stores`: crossed with the `failpoint` fixture's params
    through an indirect parametrize, the after_broadcast case failed in 5 of 7 runs on both back
    ends, its settle reverting on chain; the cause was not found.)"""
    return store_url


def _post_pair(m, http, buyer, provider):
    bid = m.bid(provider, capacity=2, price=UBC)
    order = m.order(buyer, units=2, duration=HOUR, max_price=2 * UBC)
    assert http.post("/bids", json=order_body(*bid)).status_code == 201
    assert http.post("/orders", json=order_body(*order)).status_code == 201
    return "0x" + order[0].digest(m.domain).hex(), "0x" + bid[0].digest(m.domain).hex()


@pytest.fixture
def funded(accounts, market):
    buyer, provider = accounts[10], accounts[20]
    market.fund_buyer(buyer, 100 * UBC)
    market.stake_provider(provider, 8)
    return buyer, provider


def test_kill_after_store_commit_keeps_every_accepted_message(market, funded, matcher_process):
    with matcher_process.client() as http:
        order_digest, bid_digest = _post_pair(market, http, *funded)
    matcher_process.kill()
    matcher_process.start()
    with matcher_process.client() as http:
        assert http.get(f"/orders/{order_digest}").json()["status"] == "open"
        assert http.get(f"/bids/{bid_digest}").json()["status"] == "open"


@pytest.mark.parametrize("failpoint", ["after_clearing", "after_broadcast"])
def test_kill_during_round_settles_it_exactly_once(
    market, funded, matcher_process, settlement, chain, matcher, failpoint
):
    matcher_process.stop()
    matcher_process.start(failpoint=failpoint)
    with matcher_process.client() as http:
        order_digest, bid_digest = _post_pair(market, http, *funded)
    with pytest.raises(httpx.HTTPError):
        matcher_process.close_round()  # the process dies mid-request
    assert matcher_process.wait_dead() == -9

    landed_before_restart = settlement.rounds(matcher, 1).batches
    assert landed_before_restart == (1 if failpoint == "after_broadcast" else 0)

    matcher_process.start()  # reconciles before serving
    with matcher_process.client() as http:
        round_view = http.get("/rounds/1").json()
        assert round_view["state"] == "confirmed"
        assert http.get(f"/orders/{order_digest}").json()["filled"] == 2
        assert http.get(f"/bids/{bid_digest}").json()["filled"] == 2

    on_chain = settlement.rounds(matcher, 1)
    assert on_chain.batches == 1 and on_chain.finalizedAt > 0
    leases = [log for log in settlement.LeaseOpened.range(0, chain.blocks.height + 1) if log.round == 1]
    assert len(leases) == 1 and leases[0].units == 2

    # The matcher carries on with a fresh round id.
    with matcher_process.client() as http:
        _post_pair(market, http, *funded)
    report = matcher_process.close_round().json()
    assert report["round_id"] == 2 and report["state"] == "confirmed"
    assert settlement.rounds(matcher, 2).batches == 1
