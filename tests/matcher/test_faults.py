"""Round settlement under faults, through the real matcher process against anvil.

Each test ends with the store equal to the chain (every landed lease of the test is a recorded
fill, every recorded fill a landed lease, and no message dropped that should not be) and the next
round settling. Faults: rounds split into several batches (a small block gas limit), a message
the chain refuses in a later batch and in the first one (a poisoned message no error names), a
transaction still pending when the matcher is killed (anvil with automine off), one that never
lands and expires, a lost answer to the broadcast (a fault-injecting JSON-RPC proxy), and the
round timer stopped while its round waits on the chain.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.rpc_proxy import RpcProxy

from ..conftest import HOUR, UBC
from .conftest import MatcherProcess, order_body

#: A block gas limit that fits three matches per batch (see `underbid.matcher.submission`).
SMALL_GAS_LIMIT = 960_000


@pytest.fixture
def start_block(chain) -> int:
    return chain.blocks.height + 1


@pytest.fixture
def proc(tmp_path, book_path, chain):
    made: list[MatcherProcess] = []

    def make(rpc: str | None = None, round_seconds: float = 0) -> MatcherProcess:
        p = MatcherProcess(rpc or chain.provider.uri, book_path, tmp_path / "matcher.db", tmp_path / "matcher.log",
                         round_seconds=round_seconds)
        made.append(p)
        return p

    yield make
    for p in made:
        p.kill()


@pytest.fixture
def automine(chain):
    """Switches anvil's automine; always back on (and the mempool mined) when the test ends."""

    def set_automine(on: bool) -> None:
        chain.provider.make_request("evm_setAutomine", [on])

    yield set_automine
    set_automine(True)
    chain.provider.make_request("evm_mine", [])


@pytest.fixture
def small_blocks(chain):
    """A block gas limit that splits rounds into batches of three matches; restored afterwards."""
    chain.provider.make_request("evm_setBlockGasLimit", [hex(SMALL_GAS_LIMIT)])
    chain.provider.make_request("evm_mine", [])
    yield
    chain.provider.make_request("evm_setBlockGasLimit", [hex(30_000_000)])
    chain.provider.make_request("evm_mine", [])


def digest(message, m) -> str:
    return "0x" + message.digest(m.domain).hex()


def post(http, kind: str, pair) -> str:
    r = http.post(f"/{kind}", json=order_body(*pair))
    assert r.status_code == 201, r.text
    return r.json()["digest"]


def close(p: MatcherProcess) -> dict:
    r = p.close_round()
    assert r.status_code == 200, r.text
    return r.json()


def insert_poisoned_bid(db: Path, m, provider, price: int, capacity: int = 1) -> str:
    """Stores a bid whose signature is another bid's (the chain refuses it with SignerMismatch, an
    error naming no message), as a message the API let through would be stored."""
    bid, _ = m.bid(provider, capacity=capacity, price=price)
    _, foreign_signature = m.bid(provider, capacity=capacity, price=price)
    d = digest(bid, m)
    with sqlite3.connect(db) as conn:
        current = conn.execute("SELECT MIN(id) FROM rounds WHERE state = 'open' AND closed_at IS NULL").fetchone()[0]
        conn.execute(
            "INSERT INTO messages (digest, kind, signer, nonce, market, total, deadline, body, signature,"
            " received_at, intake_round) VALUES (?, 'bid', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (d, bid.provider, str(bid.nonce), bid.market, capacity, bid.deadline, bid.model_dump_json(by_alias=True),
             foreign_signature, time.time(), current),
        )
    return d


def assert_store_equals_chain(db: Path, settlement, chain, matcher, start_block: int, dropped: set[str] = frozenset()):
    """Every lease of this test on chain is a recorded fill and every fill a lease; the dropped
    messages are exactly `dropped`; no round is left half-settled."""
    fills: Counter[str] = Counter()
    for lease in settlement.LeaseOpened.range(start_block, chain.blocks.height + 1):
        assert lease.matcher == matcher.address
        fills["0x" + bytes(lease.orderDigest).hex()] += lease.units
        fills["0x" + bytes(lease.bidDigest).hex()] += lease.units
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT digest, filled, status, reason FROM messages").fetchall()
        unsettled = conn.execute("SELECT id, state FROM rounds WHERE state IN ('cleared', 'submitted')").fetchall()
        rounds = conn.execute("SELECT id FROM rounds WHERE state = 'confirmed'").fetchall()
        mined = dict(conn.execute("SELECT round_id, COUNT(*) FROM batches WHERE state = 'mined' GROUP BY round_id"))
    stored = {d: (filled, status, reason) for d, filled, status, reason in rows}
    assert set(fills) <= set(stored), "a landed lease names a message the store does not have"
    for d, (filled, status, reason) in stored.items():
        assert filled == fills.get(d, 0), (d, filled, fills.get(d, 0), status, reason)
        assert (status == "dropped") == (d in dropped), (d, status, reason)
    assert not unsettled, unsettled
    for (round_id,) in rounds:
        assert settlement.rounds(matcher, round_id).batches == mined.get(round_id, 0)
    return fills


def next_round_settles(p: MatcherProcess, m, buyer, provider) -> None:
    """A fresh pair posted now is matched and settled by the next close."""
    with p.client() as http:
        bid = post(http, "bids", m.bid(provider, capacity=1, price=UBC))
        post(http, "orders", m.order(buyer, units=1, duration=HOUR, max_price=2 * UBC))
        report = close(p)
        assert report["state"] == "confirmed", report
        assert http.get(f"/bids/{bid}").json()["filled"] == 1


@pytest.fixture
def players(accounts, market):
    buyers, providers = list(accounts[10:14]), list(accounts[20:26])
    for b in buyers:
        market.fund_buyer(b, 200 * UBC)
    for p in providers:
        market.stake_provider(p, 6)
    return buyers, providers


def test_a_split_round_drops_a_refused_message_in_a_later_batch(
    market, players, settlement, chain, matcher, proc, small_blocks, start_block
):
    m, (buyers, providers) = market, players
    p = proc()
    p.start()
    with p.client() as http:
        # Six one-unit bids at rising prices and six orders: two batches of three matches.
        for i, provider in enumerate(providers[:5]):
            post(http, "bids", m.bid(provider, capacity=1, price=UBC + i * UBC // 10))
        poisoned = insert_poisoned_bid(p.db, m, providers[5], price=2 * UBC)  # the priciest: the last batch
        for i in range(6):
            post(http, "orders", m.order(buyers[i % 4], units=1, duration=HOUR, max_price=3 * UBC))
        report = close(p)
        assert report["state"] == "confirmed", report
        view = http.get(f"/rounds/{report['round_id']}").json()
        assert [b["state"] for b in view["batches"]] == ["mined", "mined"]
        assert http.get(f"/bids/{poisoned}").json()["status"] == "dropped"
    assert settlement.rounds(matcher, report["round_id"]).batches == 2
    fills = assert_store_equals_chain(p.db, settlement, chain, matcher, start_block, {poisoned})
    assert sum(fills.values()) == 2 * 5  # five matches landed, each counted for its order and its bid
    next_round_settles(p, m, buyers[0], providers[0])
    assert_store_equals_chain(p.db, settlement, chain, matcher, start_block, {poisoned})


def test_a_poisoned_message_in_the_first_batch_is_found_and_the_round_goes_on(
    market, players, settlement, chain, matcher, proc, start_block
):
    m, (buyers, providers) = market, players
    p = proc()
    p.start()
    with p.client() as http:
        good = [post(http, "bids", m.bid(provider, capacity=1, price=2 * UBC)) for provider in providers[:3]]
        # The cheapest bids, so the clearing matches them first; neither error names them.
        poisoned = {insert_poisoned_bid(p.db, m, providers[3], price=UBC),
                    insert_poisoned_bid(p.db, m, providers[4], price=UBC)}
        for buyer in buyers[:3]:
            post(http, "orders", m.order(buyer, units=1, duration=HOUR, max_price=3 * UBC))
        report = close(p)
        assert report["state"] == "confirmed", report
        assert report["dropped"] == 2
        for d in good:
            assert http.get(f"/bids/{d}").json()["filled"] == 1
    assert_store_equals_chain(p.db, settlement, chain, matcher, start_block, poisoned)
    next_round_settles(p, m, buyers[0], providers[0])


def test_three_refused_messages_among_five_do_not_exhaust_the_round(
    market, players, settlement, chain, matcher, proc, start_block
):
    m, (buyers, providers) = market, players
    p = proc()
    p.start()
    with p.client() as http:
        good = [post(http, "bids", m.bid(provider, capacity=1, price=2 * UBC)) for provider in providers[:2]]
        poisoned = {insert_poisoned_bid(p.db, m, provider, price=UBC) for provider in providers[2:5]}
        for buyer in buyers[:2]:
            post(http, "orders", m.order(buyer, units=1, duration=HOUR, max_price=3 * UBC))
        report = close(p)
        assert report["state"] == "confirmed", report
        assert report["dropped"] == 3
        for d in good:
            assert http.get(f"/bids/{d}").json()["filled"] == 1
    assert_store_equals_chain(p.db, settlement, chain, matcher, start_block, poisoned)


def test_a_transaction_pending_at_restart_is_followed_not_replaced(
    market, players, settlement, chain, matcher, proc, automine, start_block
):
    m, (buyers, providers) = market, players
    p = proc()
    p.start()
    with p.client() as http:
        bid = post(http, "bids", m.bid(providers[0], capacity=2, price=UBC))
        order = post(http, "orders", m.order(buyers[0], units=2, duration=HOUR, max_price=2 * UBC))
    automine(False)
    closing = threading.Thread(target=lambda: pytest.raises(httpx.HTTPError, p.close_round), daemon=True)
    closing.start()
    w3 = chain.provider.web3
    deadline = time.monotonic() + 60
    while w3.eth.get_transaction_count(matcher.address, "pending") == w3.eth.get_transaction_count(matcher.address):
        assert time.monotonic() < deadline, "the matcher never broadcast its batch"
        time.sleep(0.2)
    p.kill()  # SIGKILL while it waits for the receipt
    closing.join(timeout=10)

    p.start()  # reconciles: the same transaction is still pending, so nothing is re-cleared
    with p.client() as http:
        assert http.get("/rounds/1").json()["state"] == "submitted"
    chain.provider.make_request("evm_mine", [])
    automine(True)
    report = close(p)  # follows the pending transaction to its receipt first
    with p.client() as http:
        assert http.get("/rounds/1").json()["state"] == "confirmed"
        assert http.get(f"/bids/{bid}").json()["filled"] == 2
        assert http.get(f"/orders/{order}").json()["filled"] == 2
    assert report["round_id"] != 1
    assert settlement.rounds(matcher, 1).batches == 1
    assert_store_equals_chain(p.db, settlement, chain, matcher, start_block)
    next_round_settles(p, m, buyers[1], providers[1])
    assert_store_equals_chain(p.db, settlement, chain, matcher, start_block)


def test_a_transaction_that_expires_unmined_is_cleared_again(
    market, players, settlement, chain, matcher, proc, automine, start_block, params
):
    m, (buyers, providers) = market, players
    p = proc()
    p.start()
    with p.client() as http:
        bid = post(http, "bids", m.bid(providers[0], capacity=1, price=UBC))
        post(http, "orders", m.order(buyers[0], units=1, duration=HOUR, max_price=2 * UBC))
    automine(False)
    closing = threading.Thread(target=lambda: pytest.raises(httpx.HTTPError, p.close_round), daemon=True)
    closing.start()
    w3 = chain.provider.web3
    deadline = time.monotonic() + 60
    while w3.eth.get_transaction_count(matcher.address, "pending") == w3.eth.get_transaction_count(matcher.address):
        assert time.monotonic() < deadline, "the matcher never broadcast its batch"
        time.sleep(0.2)
    p.kill()
    closing.join(timeout=10)
    # The transaction leaves the mempool and the chain moves past its deadline: it can never land.
    chain.provider.make_request("anvil_dropAllTransactions", [])
    chain.provider.make_request("evm_increaseTime", [params.notice_period])
    chain.provider.make_request("evm_mine", [])
    automine(True)

    p.start()  # knows the batch never landed (deadline passed, nonce unused): clears it again
    with p.client() as http:
        assert http.get("/rounds/1").json()["state"] == "confirmed"
        assert http.get(f"/bids/{bid}").json()["filled"] == 1
    assert_store_equals_chain(p.db, settlement, chain, matcher, start_block)
    next_round_settles(p, m, buyers[1], providers[1])


def test_a_lost_broadcast_answer_is_not_a_failed_round(market, players, settlement, chain, matcher, proc, start_block):
    m, (buyers, providers) = market, players
    with RpcProxy(chain.provider.uri) as proxy:
        p = proc(rpc=proxy.url)
        p.start()
        with p.client() as http:
            bid = post(http, "bids", m.bid(providers[0], capacity=1, price=UBC))
            post(http, "orders", m.order(buyers[0], units=1, duration=HOUR, max_price=2 * UBC))
            # The node takes the transaction (and anvil mines it) but the answer never arrives:
            # the receipt decides, and nothing is signed, sent or cleared again.
            proxy.set("drop", methods={"eth_sendRawTransaction"}, times=1)
            nonce = chain.provider.web3.eth.get_transaction_count(matcher.address)
            report = close(p)
            assert report["state"] == "confirmed", report
            assert http.get(f"/bids/{bid}").json()["filled"] == 1
        assert proxy.seen.count("eth_sendRawTransaction") == 1
        assert chain.provider.web3.eth.get_transaction_count(matcher.address) == nonce + 1
        assert settlement.rounds(matcher, report["round_id"]).batches == 1
        assert_store_equals_chain(p.db, settlement, chain, matcher, start_block)
        next_round_settles(p, m, buyers[1], providers[1])


def test_the_round_timer_settles_and_stops_cleanly_while_waiting_on_the_chain(
    market, players, settlement, chain, matcher, proc, automine, start_block
):
    m, (buyers, providers) = market, players
    p = proc(round_seconds=1)
    p.start()
    with p.client() as http:
        bid = post(http, "bids", m.bid(providers[0], capacity=1, price=UBC))
        post(http, "orders", m.order(buyers[0], units=1, duration=HOUR, max_price=2 * UBC))
        deadline = time.monotonic() + 60
        while http.get(f"/bids/{bid}").json()["filled"] != 1:
            assert time.monotonic() < deadline, "the timer never settled the round"
            time.sleep(0.3)
        # Next: the timer's round waits on a pending transaction when the process is told to stop.
        bid2 = post(http, "bids", m.bid(providers[1], capacity=1, price=UBC))
        automine(False)
        post(http, "orders", m.order(buyers[1], units=1, duration=HOUR, max_price=2 * UBC))
    w3 = chain.provider.web3
    deadline = time.monotonic() + 60
    while w3.eth.get_transaction_count(matcher.address, "pending") == w3.eth.get_transaction_count(matcher.address):
        assert time.monotonic() < deadline, "the timer never broadcast its batch"
        time.sleep(0.2)
    p.stop()  # SIGTERM: the timer's round returns at once, then the store closes
    assert p.proc is not None and p.proc.returncode is not None
    assert "closed database" not in p.log.read_text().lower()
    chain.provider.make_request("evm_mine", [])
    automine(True)
    p.start()
    with p.client() as http:
        assert http.get(f"/bids/{bid2}").json()["filled"] == 1
    assert_store_equals_chain(p.db, settlement, chain, matcher, start_block)
    with p.client() as http:
        bid3 = post(http, "bids", m.bid(providers[2], capacity=1, price=UBC))
        post(http, "orders", m.order(buyers[2], units=1, duration=HOUR, max_price=2 * UBC))
        deadline = time.monotonic() + 60
        while http.get(f"/bids/{bid3}").json()["filled"] != 1:
            assert time.monotonic() < deadline, "the timer never settled the next round"
            time.sleep(0.3)
    assert_store_equals_chain(p.db, settlement, chain, matcher, start_block)


def test_a_lost_answer_while_pending_is_already_known_not_refused(
    market, players, settlement, chain, matcher, proc, automine, start_block
):
    m, (buyers, providers) = market, players
    with RpcProxy(chain.provider.uri) as proxy:
        p = proc(rpc=proxy.url)
        p.start()
        with p.client() as http:
            bid = post(http, "bids", m.bid(providers[0], capacity=1, price=UBC))
            post(http, "orders", m.order(buyers[0], units=1, duration=HOUR, max_price=2 * UBC))
        automine(False)
        proxy.set("drop", methods={"eth_sendRawTransaction"}, times=1)
        reports: list[dict] = []
        closing = threading.Thread(target=lambda: reports.append(close(p)), daemon=True)
        closing.start()
        deadline = time.monotonic() + 60
        while proxy.seen.count("eth_sendRawTransaction") < 2:  # sent again while still pending
            assert time.monotonic() < deadline, "the matcher never broadcast its transaction again"
            time.sleep(0.2)
        chain.provider.make_request("evm_mine", [])
        automine(True)
        closing.join(timeout=60)
        assert reports and reports[0]["state"] == "confirmed", reports
        with p.client() as http:
            assert http.get(f"/bids/{bid}").json()["filled"] == 1
        # The node answered "transaction already imported" (anvil; geth says "already known"):
        # recognised as the same transaction, not logged as a refusal.
        assert "broadcast refused" not in p.log.read_text()
        assert_store_equals_chain(p.db, settlement, chain, matcher, start_block)
        next_round_settles(p, m, buyers[1], providers[1])


def test_a_store_of_the_earlier_layout_is_carried_over(tmp_path):
    """A store written by the version that kept only batch hashes opens with batch states: a sent
    batch, or a landed one of an unconfirmed round (whose fills that version applied only at
    confirmation), becomes `signed`, so the reconciler asks the chain what landed."""
    from underbid.matcher.store import BatchState, Store

    path = tmp_path / "old.db"
    payload = '{"matches": [{"order": "0x01", "bid": "0x02", "units": 1, "market": "0x03"}], "prices": {"0x03": "5"}}'
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE rounds (id INTEGER PRIMARY KEY, state TEXT NOT NULL, opened_at REAL NOT NULL,
                closed_at REAL, cleared_at REAL, confirmed_at REAL, clearing TEXT, error TEXT);
            CREATE TABLE batches (round_id INTEGER NOT NULL REFERENCES rounds (id), batch INTEGER NOT NULL,
                payload TEXT NOT NULL, tx_hash TEXT, gas_used INTEGER,
                state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'confirmed')), PRIMARY KEY (round_id, batch));
            INSERT INTO rounds VALUES (1, 'confirmed', 1, 1, 1, 1, NULL, NULL),
                                      (2, 'submitted', 2, 2, 2, NULL, NULL, NULL);
        """)
        conn.executemany("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?)", [
            (1, 0, payload, "0xaa", 1, "confirmed"),
            (2, 0, payload, "0xbb", 1, "confirmed"),
            (2, 1, payload, "0xcc", None, "sent"),
            (2, 2, payload, None, None, "pending"),
        ])
    store = Store(path)
    try:
        assert [b.state for b in store.get_round(1).batches] == [BatchState.MINED]
        second = store.get_round(2).batches
        assert [b.state for b in second] == [BatchState.SIGNED, BatchState.SIGNED, BatchState.PENDING]
        assert second[1].tx is not None and second[1].tx.tx_hash == "0xcc" and second[1].tx.raw is None
        assert second[0].payload.prices == {"0x03": 5}
    finally:
        store.close()


def test_a_later_batch_pending_at_restart_is_followed_and_its_fills_recorded(
    market, players, settlement, chain, matcher, proc, small_blocks, automine, start_block
):
    m, (buyers, providers) = market, players
    p = proc()
    p.start()
    with p.client() as http:
        for i, provider in enumerate(providers):
            post(http, "bids", m.bid(provider, capacity=1, price=UBC + i * UBC // 10))
        for i in range(6):
            post(http, "orders", m.order(buyers[i % 4], units=1, duration=HOUR, max_price=3 * UBC))
    automine(False)
    closing = threading.Thread(target=lambda: pytest.raises(httpx.HTTPError, p.close_round), daemon=True)
    closing.start()
    w3 = chain.provider.web3
    first = w3.eth.get_transaction_count(matcher.address)
    deadline = time.monotonic() + 90
    while w3.eth.get_transaction_count(matcher.address, "pending") < first + 1:
        assert time.monotonic() < deadline, "the matcher never broadcast its first batch"
        time.sleep(0.2)
    chain.provider.make_request("evm_mine", [])  # the first batch lands; the second is signed and sent
    while w3.eth.get_transaction_count(matcher.address, "pending") < first + 2:
        assert time.monotonic() < deadline, "the matcher never broadcast its second batch"
        time.sleep(0.2)
    p.kill()
    closing.join(timeout=10)
    assert settlement.rounds(matcher, 1).batches == 1

    p.start()
    with p.client() as http:
        view = http.get("/rounds/1").json()
        assert view["state"] == "submitted" and [b["state"] for b in view["batches"]] == ["mined", "signed"]
    chain.provider.make_request("evm_mine", [])
    automine(True)
    close(p)
    with p.client() as http:
        view = http.get("/rounds/1").json()
        assert view["state"] == "confirmed" and [b["state"] for b in view["batches"]] == ["mined", "mined"]
    assert settlement.rounds(matcher, 1).batches == 2
    assert w3.eth.get_transaction_count(matcher.address) == first + 2  # nothing was signed twice
    fills = assert_store_equals_chain(p.db, settlement, chain, matcher, start_block)
    assert sum(fills.values()) == 2 * 6
    next_round_settles(p, m, buyers[0], providers[0])
