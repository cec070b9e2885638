"""Failover: two matcher processes on one Postgres store (real processes, real Postgres, real
anvil). The leader is SIGKILLed at each stage of a round; the follower takes over within seconds,
finishes the round through reconcile, and afterwards every acknowledged message is in the store,
every round is settled exactly once, and the store agrees with the chain."""

from __future__ import annotations

import httpx
import pytest

from .conftest import MatcherProcess, leases_of_round, post_pair, wait_until

#: Seconds within which a follower must have taken over and finished the round in flight: its
#: next lock try (1 s), reconcile, and a settlement transaction followed to its receipt.
TAKEOVER_SECONDS = 20


def _leads(process: MatcherProcess) -> bool:
    try:
        return httpx.get(process.url + "/health", timeout=5).json()["leader"]
    except httpx.HTTPError:
        return False


@pytest.fixture
def two_matchers(tmp_path, book_path, chain, postgres_url):
    """Two processes of the test matcher on one fresh Postgres database: (first, second)."""
    processes = [
        MatcherProcess(chain.provider.uri, book_path, postgres_url, tmp_path / f"matcher{i}.log") for i in range(2)
    ]
    yield processes
    for process in processes:
        process.stop()


# The old leader's return as a follower and a second round are checked once (they do not depend
# on where the leader died), to keep the suite's time down.
@pytest.mark.parametrize(("failpoint", "then_round_two"),
                         [("after_clearing", False), ("after_signing", True), ("after_broadcast", False)])
def test_leader_killed_mid_round_is_replaced_and_the_round_settles_once(
    market, crash_pair, two_matchers, settlement, chain, matcher, failpoint, then_round_two
):
    leader, follower = two_matchers
    leader.start(failpoint=failpoint)  # started alone, so it takes the lock
    wait_until("the first process leads", lambda: _leads(leader), 30)
    follower.start()
    assert not _leads(follower)

    # Messages go to both processes, and the follower refuses to close the round.
    with leader.client() as to_leader, follower.client() as to_follower:
        acknowledged = [
            post_pair(market, to_leader, *crash_pair, order_http=to_follower),
            post_pair(market, to_follower, *crash_pair, order_http=to_leader),
        ]
    refused = follower.close_round()
    assert refused.status_code == 503
    assert refused.json()["detail"][0]["field"] == "leader"

    with pytest.raises(httpx.HTTPError):
        leader.close_round()  # the leader kills itself at the failpoint, mid-request
    assert leader.wait_dead() == -9
    # Where exactly it died is checked by test_crash (assert_killed_at); here the follower may
    # already be acting on the store and the chain.

    took = wait_until("the follower leads and round 1 is confirmed", lambda: _leads(follower) and httpx.get(
        follower.url + "/rounds/1", timeout=5).json()["state"] == "confirmed", TAKEOVER_SECONDS)
    print(f"failover at {failpoint}: round 1 confirmed by the new leader {took:.1f} s after the kill")

    on_chain = settlement.rounds(matcher, 1)
    assert on_chain.batches == 1 and on_chain.finalizedAt > 0
    leases = leases_of_round(settlement, chain, 1)
    assert sorted(lease.units for lease in leases) == [2, 2]  # each pair matched once, exactly

    rounds = [1]
    if then_round_two:
        # The old leader comes back as a follower; the new leader carries on with round 2.
        leader.start()
        assert not _leads(leader)
        with leader.client() as to_old, follower.client() as to_new:
            acknowledged.append(post_pair(market, to_old, *crash_pair, order_http=to_new))
        report = follower.close_round().json()
        assert report["round_id"] == 2 and report["state"] == "confirmed"
        rounds.append(2)

    # Every acknowledged message is stored, filled exactly as the chain's leases say, through
    # either process.
    filled_on_chain: dict[str, int] = {}
    for lease in [lease for r in rounds for lease in leases_of_round(settlement, chain, r)]:
        for digest in ("0x" + lease.orderDigest.hex(), "0x" + lease.bidDigest.hex()):
            filled_on_chain[digest] = filled_on_chain.get(digest, 0) + lease.units
    with follower.client() as http:
        for order_digest, bid_digest in acknowledged:
            assert http.get(f"/orders/{order_digest}").json()["filled"] == filled_on_chain[order_digest] == 2
            assert http.get(f"/bids/{bid_digest}").json()["filled"] == filled_on_chain[bid_digest] == 2
        for round_id in rounds:
            stored = http.get(f"/rounds/{round_id}").json()
            assert stored["state"] == "confirmed"
            assert sum(b["state"] == "mined" for b in stored["batches"]) == settlement.rounds(matcher, round_id).batches
