"""Crash safety: SIGKILL the matcher at each dangerous point, restart it, and check that every
accepted message is still there and each round is settled on chain exactly once."""

import httpx
import pytest

from .conftest import assert_killed_at, leases_of_round, post_pair


@pytest.fixture
def matcher_db(store_url) -> str:
    """Intake, the round, its settlement and recovery all go through the store: both back ends.
    (A fixture with params, not `on_both_stores`: crossed with the `failpoint` fixture's params
    through an indirect parametrize, the after_broadcast case failed in 5 of 7 runs on both back
    ends, its settle reverting on chain; the cause was not found.)"""
    return store_url


def test_kill_after_store_commit_keeps_every_accepted_message(market, crash_pair, matcher_process):
    with matcher_process.client() as http:
        order_digest, bid_digest = post_pair(market, http, *crash_pair)
    matcher_process.kill()
    matcher_process.start()
    with matcher_process.client() as http:
        assert http.get(f"/orders/{order_digest}").json()["status"] == "open"
        assert http.get(f"/bids/{bid_digest}").json()["status"] == "open"


@pytest.mark.parametrize("failpoint", ["after_clearing", "after_signing", "after_broadcast"])
def test_kill_during_round_settles_it_exactly_once(
    market, crash_pair, matcher_process, matcher_db, settlement, chain, matcher, failpoint
):
    matcher_process.stop()
    matcher_process.start(failpoint=failpoint)
    with matcher_process.client() as http:
        order_digest, bid_digest = post_pair(market, http, *crash_pair)
    with pytest.raises(httpx.HTTPError):
        matcher_process.close_round()  # the process dies mid-request
    assert matcher_process.wait_dead() == -9

    assert_killed_at(failpoint, matcher_db, chain, settlement, matcher)

    matcher_process.start()  # reconciles before serving
    with matcher_process.client() as http:
        round_view = http.get("/rounds/1").json()
        assert round_view["state"] == "confirmed"
        assert http.get(f"/orders/{order_digest}").json()["filled"] == 2
        assert http.get(f"/bids/{bid_digest}").json()["filled"] == 2

    on_chain = settlement.rounds(matcher, 1)
    assert on_chain.batches == 1 and on_chain.finalizedAt > 0
    leases = leases_of_round(settlement, chain, 1)
    assert len(leases) == 1 and leases[0].units == 2

    # The matcher carries on with a fresh round id.
    with matcher_process.client() as http:
        post_pair(market, http, *crash_pair)
    report = matcher_process.close_round().json()
    assert report["round_id"] == 2 and report["state"] == "confirmed"
    assert settlement.rounds(matcher, 2).batches == 1
