"""The store on both back ends (a real SQLite file, a real PostgreSQL server): every method, the
migrations, group commit, and what several processes sharing one Postgres need (admission that
cannot over-reserve a provider's stake, one migration, nothing cached per process).

Messages are real EIP-712 orders and bids with real signatures; a matcher would have checked
them, the store does not. Several `Store` objects on one database stand for several matcher
processes: each has its own connections, as a process would.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections.abc import Iterator

import coincurve
import pytest
from click.testing import CliRunner
from eth_account import Account

from underbid.cli import main
from underbid.matcher.store import (
    SCHEMA_VERSION,
    BatchPayload,
    BatchState,
    DuplicateMessage,
    Match,
    MessageKind,
    RoundState,
    SignedTx,
    Store,
    StoreError,
)
from underbid.protocol.eip712 import Bid, Domain, Order, SignedMessage, sign_digest
from underbid.protocol.pricing import NoMatch, Unmatched

DOMAIN = Domain(31337, "0x" + "5e" * 20)
MATCHER = Account.from_key(b"\x01" * 32).address
MARKET_A = "0x" + "aa" * 32
MARKET_B = "0x" + "bb" * 32
HOUR = 3600
NOW = 1_800_000_000
_nonces = itertools.count(1)


class Signer:
    """A real key: its address, and signatures over real EIP-712 digests."""

    def __init__(self, seed: int):
        self.key = coincurve.PrivateKey((seed + 1000).to_bytes(32, "big"))
        self.address = Account.from_key(self.key.secret).address

    def sign(self, message: SignedMessage) -> tuple[str, bytes]:
        digest = message.digest(DOMAIN)
        return "0x" + digest.hex(), sign_digest(self.key, digest)


BUYER, OTHER_BUYER, PROVIDER, OTHER_PROVIDER = (Signer(i) for i in range(4))

Row = tuple[MessageKind, str, SignedMessage, bytes, dict | None]


def order(buyer: Signer = BUYER, **fields) -> Row:
    values = dict(buyer=buyer.address, matcher=MATCHER, market=MARKET_A, units=2, duration=2 * HOUR,
                  max_price=3_000_000, deadline=NOW + HOUR, nonce=next(_nonces))
    message = Order(**{**values, **fields})
    digest, signature = buyer.sign(message)
    return MessageKind.ORDER, digest, message, signature, None


def bid(provider: Signer = PROVIDER, **fields) -> Row:
    values = dict(provider=provider.address, matcher=MATCHER, market=MARKET_A, capacity=4, price=2_000_000,
                  max_duration=24 * HOUR, deadline=NOW + HOUR, nonce=next(_nonces))
    message = Bid(**{**values, **fields})
    digest, signature = provider.sign(message)
    return MessageKind.BID, digest, message, signature, {"round": 1, "signature": "0x01"}


@pytest.fixture
def store(store_url) -> Iterator[Store]:
    opened = Store(store_url)
    yield opened
    opened.close()


def test_messages_are_committed_and_read_back_by_every_query(store, store_url):
    """Orders and bids come back whole from each query that reads them, filtered as each says."""
    assert store.backend == ("postgres" if store_url.startswith("postgresql://") else "sqlite")
    assert store.schema_version() == SCHEMA_VERSION
    first = store.open_round()
    orders = [order(), order(units=3, max_price=5_000_000), order(market=MARKET_B, deadline=NOW - 1)]
    bids = [bid(), bid(capacity=2, market=MARKET_B), bid(OTHER_PROVIDER)]
    store.add_messages(orders, first)
    store.add_messages(bids[:2], first)
    second = store.close_intake(first)
    store.add_message(*bids[2], round_id=second)

    stored = store.get_message(orders[0][1].upper().replace("0X", "0x"), MessageKind.ORDER)
    assert stored is not None and stored.order == orders[0][2] and stored.signature == orders[0][3]
    assert stored.remaining == 2 and stored.status == "open" and stored.unmatched is None
    assert store.get_message(orders[0][1], MessageKind.BID) is None
    assert store.get_message(bids[0][1]).receipt == {"round": 1, "signature": "0x01"}
    assert store.stored_digests([orders[0][1], "0x" + "00" * 32]) == {orders[0][1]}

    # Deadlines, markets and intake rounds filter the open messages (oldest first, then by digest).
    open_orders = store.open_messages(MessageKind.ORDER, NOW)
    assert [m.digest for m in open_orders] == sorted([orders[0][1], orders[1][1]])
    in_first = store.open_messages(MessageKind.BID, NOW, round_upto=first)
    assert [m.digest for m in in_first] == sorted(b[1] for b in bids[:2])
    assert [m.digest for m in store.open_messages(MessageKind.BID, NOW, market=MARKET_B)] == [bids[1][1]]
    assert len(store.open_messages(MessageKind.BID, NOW, markets=[MARKET_A, MARKET_B])) == 3
    assert store.open_markets(MessageKind.BID, NOW) == {MARKET_A, MARKET_B}
    assert store.open_markets(MessageKind.ORDER, NOW) == {MARKET_A}
    assert store.count_open(NOW, [MARKET_A]) == 4
    assert store.count_open(NOW, [MARKET_A], round_upto=first) == 3

    # A signer's messages in insertion order (one request shares its received_at), paged.
    mine = store.messages_of(BUYER.address)
    assert [m.digest for m in mine] == [o[1] for o in orders]
    assert [m.digest for m in store.messages_of(BUYER.address, MessageKind.ORDER, limit=1, offset=1)] == [orders[1][1]]
    assert [m.digest for m in store.messages_of(BUYER.address, offset=2)] == [orders[2][1]]
    assert store.messages_of(BUYER.address, MessageKind.BID) == []

    holders = store.open_nonce_holders([(BUYER.address, orders[1][2].nonce), (BUYER.address, 10**70)])
    assert holders == {(BUYER.address, orders[1][2].nonce): (orders[1][1], NOW + HOUR)}
    assert sorted(store.open_order_terms(BUYER.address, NOW)) == [(2, 3_000_000, 2 * HOUR), (3, 5_000_000, 2 * HOUR)]
    assert store.live_bid_capacity(PROVIDER.address, NOW) == 6
    assert store.live_bid_capacity(PROVIDER.address, NOW + 2 * HOUR) == 0

    store.name_markets({MARKET_A: "gpu=a"})
    store.name_markets({MARKET_A: "gpu=renamed", MARKET_B: "gpu=b"})  # the first name stays
    summary = store.market_summary(NOW)
    assert summary == [
        {"market": MARKET_A, "spec": "gpu=a", "open_orders": 2, "open_bids": 2},
        {"market": MARKET_B, "spec": "gpu=b", "open_orders": 0, "open_bids": 1},
    ]
    assert [m.digest for m in store.market_book(MARKET_B, first)] == [orders[2][1], bids[1][1]]
    assert store.market_book(MARKET_B, 0) == []


def test_a_duplicate_commits_nothing_of_its_request_and_an_open_nonce_is_unique(store):
    """A request holding one stored digest commits none of its messages; a second open message
    with a signer's nonce is refused until the first is dropped."""
    round_id = store.open_round()
    first = order()
    store.add_messages([first], round_id)
    fresh = order()
    with pytest.raises(DuplicateMessage):
        store.add_messages([fresh, first], round_id)
    assert store.get_message(fresh[1]) is None
    same_nonce = order(nonce=first[2].nonce, units=7)
    with pytest.raises(DuplicateMessage):
        store.add_messages([same_nonce], round_id)
    store.drop(first[1], "cancelled on chain")
    assert store.get_message(first[1]).reason == "cancelled on chain"
    store.add_messages([same_nonce], round_id)
    assert store.stored_digests([first[1], same_nonce[1]], only_open=True) == {same_nonce[1]}


def test_concurrent_requests_are_group_committed_and_each_is_durable(store, store_url):
    """Requests from many threads at once all commit (a duplicate among them alone is refused),
    and a store opened afresh on the same database (another process) reads every one."""
    round_id = store.open_round()
    taken = order()
    store.add_messages([taken], round_id)
    requests = [[order(), bid(Signer(10 + i))] for i in range(12)] + [[taken]]
    errors: list[BaseException | None] = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def send(i: int) -> None:
        start.wait()
        try:
            store.add_messages(requests[i], round_id)
        except BaseException as exc:  # noqa: BLE001 - the test inspects each request's outcome
            errors[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors[:-1] == [None] * 12 and isinstance(errors[-1], DuplicateMessage)
    other = Store(store_url)
    try:
        digests = [row[1] for request in requests[:-1] for row in request]
        assert other.stored_digests(digests) == set(digests)
    finally:
        other.close()


def test_a_round_moves_through_its_states_and_its_fills_apply_once(store):
    """open -> closed -> cleared -> submitted -> confirmed, with its batches pending -> signed ->
    mined or dead; reopening, resetting and failing as the round worker does them."""
    o, b = order(units=3), bid(capacity=4)
    first = store.open_round()
    assert store.current_round() == first and store.open_round() == first
    store.add_messages([o, b], first)
    second = store.close_intake(first)
    assert second == first + 1 and store.closed_uncleared_rounds() == [first]
    late = bid(OTHER_PROVIDER)
    store.add_messages([late], second)
    assert store.reopen_intake(first, second) == first  # the late bid moves back to the first round
    assert store.get_round(second) is None and store.current_round() == first
    assert [m.digest for m in store.open_messages(MessageKind.BID, NOW, round_upto=first)] == [b[1], late[1]]
    second = store.close_intake(first)

    match = Match(o[1], b[1], 2, MARKET_A)
    clearing = {"prices": {MARKET_A: "2000000"}, "price_rules": {MARKET_A: "the cheapest bid left unused"}}
    store.record_clearing(first, clearing, [BatchPayload.of([match], {MARKET_A: 2_000_000, MARKET_B: 1})])
    cleared = store.get_round(first)
    assert cleared.state is RoundState.CLEARED and cleared.clearing == clearing
    assert cleared.batches[0].state is BatchState.PENDING and cleared.batches[0].payload.prices == {MARKET_A: 2_000_000}
    assert store.reset_clearing(first) and store.get_round(first).batches == ()
    assert store.closed_uncleared_rounds() == [first]
    store.record_clearing(first, clearing, [BatchPayload.of([match], {MARKET_A: 2_000_000})] * 2)

    raw = b"\x02" + bytes(range(200))
    store.record_signed(first, 0, BatchPayload.of([match], {MARKET_A: 2_000_000}), SignedTx(7, raw, "0xabc", NOW + 60))
    signed = store.get_round(first)
    assert signed.state is RoundState.SUBMITTED and signed.batches[0].tx == SignedTx(7, raw, "0xabc", NOW + 60)
    assert not store.reset_clearing(first)  # a signed batch may still land
    assert store.live_bid_capacity(PROVIDER.address, NOW) == 4
    store.record_mined(first, 0, 123_456, {o[1]: 2, b[1]: 2})
    store.record_mined(first, 0, 123_456, {o[1]: 2, b[1]: 2})  # a second report changes nothing
    assert store.get_message(o[1]).filled == 2 and store.get_message(b[1]).remaining == 2
    assert store.live_bid_capacity(PROVIDER.address, NOW) == 2  # the fill freed what it used

    store.record_signed(first, 1, BatchPayload.of([match], {}), SignedTx(8, raw, "0xdef", NOW + 60))
    store.record_dead(first, 1, "nonce used by another transaction")
    assert store.get_round(first).batches[1].reason == "nonce used by another transaction"
    store.retry_batch(first, 1)
    retried = store.get_round(first).batches[1]
    assert retried.state is BatchState.PENDING and retried.tx is None
    store.drop_from_batch(first, 1, late[1], "refused by the chain", BatchPayload.of([], {}))
    assert store.get_message(late[1]).status == "dropped" and store.get_round(first).batches[1].payload.matches == ()
    store.record_signed(first, 1, BatchPayload.of([match], {}), SignedTx(9, raw, "0x123", NOW + 60))
    store.record_mined(first, 1, 1, {o[1]: 1})
    assert store.get_message(o[1]).status == "filled"
    store.confirm_round(first)
    confirmed = store.get_round(first)
    assert confirmed.state is RoundState.CONFIRMED and confirmed.confirmed_at is not None
    assert [r.id for r in store.rounds_in(RoundState.CONFIRMED, RoundState.SUBMITTED)] == [first]
    price = store.last_prices()[MARKET_A]
    assert (price.round, price.price, price.rule) == (first, 2_000_000, "the cheapest bid left unused")

    store.fail_round(second, "round id not above the last round on chain (9)")
    assert store.get_round(second).state is RoundState.FAILED and store.current_round() is None
    assert store.open_round(min_id=10) == 10
    assert store.get_round(2**63) is None and store.get_round(-1) is None


def test_why_no_match_notes_are_recorded_and_cleared(store):
    """`note_unmatched` and `note_no_bids` record an order's outcome; a later full fill clears it."""
    round_id = store.open_round()
    a, b, elsewhere = order(), order(OTHER_BUYER), order(market=MARKET_B)
    store.add_messages([a, b, elsewhere], round_id)
    store.note_unmatched({a[1]: Unmatched(round_id, NoMatch.PRICED_OUT, "2 > 1", 0, 2)})
    assert store.get_message(a[1]).unmatched == Unmatched(round_id, NoMatch.PRICED_OUT, "2 > 1", 0, 2)
    store.note_unmatched({b[1]: Unmatched(round_id, NoMatch.OUTBID, "", 1, 2)}, served=[a[1]])
    assert store.get_message(a[1]).unmatched is None and store.get_message(b[1]).unmatched.matched == 1
    store.note_no_bids(round_id, NOW, [MARKET_B], "no bid in this market")
    told = store.get_message(elsewhere[1]).unmatched
    assert told == Unmatched(round_id, NoMatch.NO_BIDS, "no bid in this market", 0, 2)
    assert store.get_message(b[1]).unmatched.reason is NoMatch.OUTBID


def test_a_reopened_store_keeps_everything_and_runs_no_migration_again(store_url):
    """Opening a store again reads what was committed and leaves its schema version as it was."""
    first = Store(store_url)
    round_id = first.open_round()
    kept = bid()
    first.add_messages([kept], round_id)
    first.close()
    again = Store(store_url)
    try:
        assert again.schema_version() == SCHEMA_VERSION and again.current_round() == round_id
        assert again.get_message(kept[1]).bid == kept[2]
    finally:
        again.close()


def test_a_store_of_a_newer_schema_is_refused_by_name(store_url):
    """A matcher older than its store stops at once instead of writing rows it does not know."""
    Store(store_url).close()
    newer = Store(store_url)
    with newer._tx() as db:  # as a later version's migration would leave it
        db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (SCHEMA_VERSION + 1, 0.0))
    newer.close()
    with pytest.raises(StoreError, match=f"version {SCHEMA_VERSION + 1}, newer than this matcher's"):
        Store(store_url)


# ----- several processes on one Postgres -----


def test_two_stores_racing_to_admit_bids_for_one_provider_cannot_over_admit(postgres_url):
    """Two stores (two processes' connections) admit a provider's bids as the matcher does:
    reservations read and the bid committed under the provider's admission lock. Both race
    bid by bid for a stake covering 20 units; exactly 20 are admitted, never more."""
    stores = [Store(postgres_url) for _ in range(2)]
    round_id = stores[0].open_round()
    stakeable = 20
    admitted = [0, 0]
    start = threading.Barrier(2)

    def admit(i: int) -> None:
        store = stores[i]
        start.wait()
        for _ in range(15):
            candidate = bid(capacity=1)
            with store.admission([PROVIDER.address]):
                reserved = store.live_bid_capacity(PROVIDER.address, NOW)
                if reserved + 1 > stakeable:
                    continue
                time.sleep(0.002)  # widen the window between the check and the commit
                store.add_messages([candidate], round_id)
                admitted[i] += 1

    try:
        threads = [threading.Thread(target=admit, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert sum(admitted) == stakeable and min(admitted) > 0, admitted  # both took part; 30 tries, 20 fit
        for store in stores:
            assert store.live_bid_capacity(PROVIDER.address, NOW) == stakeable
    finally:
        for store in stores:
            store.close()


def test_a_second_process_waits_for_admission_and_then_reads_the_first_ones_bids(postgres_url):
    """While one store holds a provider's admission, another store's admission for it waits; once
    the first has committed and let go, the second reads the new reservation (nothing is cached:
    it had read the provider's reservations before the first one's bid)."""
    first, second = Store(postgres_url), Store(postgres_url)
    try:
        round_id = first.open_round()
        assert second.live_bid_capacity(PROVIDER.address, NOW) == 0
        entered = threading.Event()
        seen: list[int] = []

        def other_process() -> None:
            with second.admission([PROVIDER.address]):
                entered.set()
                seen.append(second.live_bid_capacity(PROVIDER.address, NOW))

        with first.admission([PROVIDER.address, OTHER_PROVIDER.address]):
            waiting = threading.Thread(target=other_process)
            waiting.start()
            assert not entered.wait(0.5), "the second store was admitted while the first held the lock"
            first.add_messages([bid(capacity=3)], round_id)
        waiting.join(timeout=30)
        assert entered.is_set() and seen == [3]
        # Another signer's admission does not wait.
        with second.admission([OTHER_BUYER.address]), first.admission([BUYER.address]):
            pass
    finally:
        first.close()
        second.close()


def test_processes_opening_one_new_postgres_store_at_once_migrate_it_once(postgres_url):
    """Four stores opening one empty database at once: each opens, and each migration ran once."""
    opened: list[Store] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_store() -> None:
        start.wait()
        try:
            opened.append(Store(postgres_url))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == [] and len(opened) == 4
        with opened[0]._reading() as db:
            versions = [row[0] for row in db.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
    finally:
        for store in opened:
            store.close()


def test_an_unreachable_or_unsupported_database_is_a_named_error(postgres_cluster):
    """No server, no such database, or a URL of another database kind: a StoreError saying which,
    without the password; `matcher run --db` refuses an unsupported URL in one line."""
    with pytest.raises(StoreError, match=r"cannot connect .*u:\*\*\*@127\.0\.0\.1:1/x: .*refused"):
        Store("postgresql://u:secret@127.0.0.1:1/x")
    with pytest.raises(StoreError, match='database "no_such_db" does not exist'):
        Store(postgres_cluster.url_of("no_such_db"))
    with pytest.raises(StoreError, match="unsupported database URL 'mysql://h/d'"):
        Store("mysql://h/d")
    result = CliRunner(mix_stderr=False).invoke(main, ["matcher", "run", "--dev", "--db", "mysql://h/d"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "unsupported database URL 'mysql://h/d'" in result.stderr


# ----- SQLite stores of earlier versions -----

#: The layout of the store before versioned migrations (main before the Postgres store), as it
#: wrote it: no schema_version table.
PREVIOUS_SCHEMA = """
CREATE TABLE messages (digest TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('order', 'bid')),
    signer TEXT NOT NULL, nonce TEXT, market TEXT NOT NULL, total INTEGER NOT NULL, filled INTEGER NOT NULL DEFAULT 0,
    deadline INTEGER NOT NULL, status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'filled', 'dropped')),
    reason TEXT, body TEXT NOT NULL, signature BLOB NOT NULL, receipt TEXT, received_at REAL NOT NULL,
    intake_round INTEGER, unmatched_round INTEGER, unmatched_reason TEXT, unmatched_detail TEXT,
    unmatched_matched INTEGER, unmatched_wanted INTEGER);
CREATE INDEX messages_open_kind ON messages (status, kind);
CREATE INDEX messages_open_market ON messages (status, kind, market, deadline, intake_round);
CREATE INDEX messages_reserved ON messages (signer, kind, status, deadline, total, filled);
CREATE TABLE markets (market TEXT PRIMARY KEY, spec TEXT);
CREATE TABLE rounds (id INTEGER PRIMARY KEY, state TEXT NOT NULL CHECK (state IN ('open', 'cleared', 'submitted',
    'confirmed', 'failed')), opened_at REAL NOT NULL, closed_at REAL, cleared_at REAL, confirmed_at REAL,
    clearing TEXT, error TEXT);
CREATE TABLE batches (round_id INTEGER NOT NULL REFERENCES rounds (id), batch INTEGER NOT NULL, payload TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'signed', 'mined', 'dead')), deadline INTEGER, tx_nonce INTEGER,
    raw_tx BLOB, tx_hash TEXT, gas_used INTEGER, fills TEXT, reason TEXT, PRIMARY KEY (round_id, batch));
CREATE UNIQUE INDEX messages_open_nonce ON messages (signer, nonce) WHERE status = 'open';
"""


def test_a_sqlite_store_of_the_previous_schema_is_migrated_and_keeps_its_rows(tmp_path):
    """A store the previous (unversioned) version wrote is recorded as migration 1 with its rows
    untouched, and works as a new one: its messages, rounds and batches read back, and the open
    nonce stays unique."""
    path = tmp_path / "previous.db"
    kept = order()
    kind, digest, message, signature, _ = kept
    with sqlite3.connect(path) as conn:
        conn.executescript(PREVIOUS_SCHEMA)
        conn.execute(
            "INSERT INTO messages (digest, kind, signer, nonce, market, total, deadline, body, signature, received_at,"
            " intake_round) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (digest, kind.value, message.signer, str(message.nonce), message.market, 2, message.deadline,
             message.model_dump_json(by_alias=True), signature, 1.0, 1),
        )
        conn.execute("INSERT INTO rounds (id, state, opened_at, closed_at) VALUES (1, 'open', 1.0, 2.0)")
        conn.execute("INSERT INTO batches (round_id, batch, payload, state) VALUES (1, 0, ?, 'pending')",
                     (BatchPayload.of([Match(digest, "0x02", 1, MARKET_A)], {MARKET_A: 5}).to_json(),))
    conn.close()
    store = Store(path)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.get_message(digest).order == message
        assert store.closed_uncleared_rounds() == [1]
        assert store.get_round(1).batches[0].payload.matches[0].order == digest
        with pytest.raises(DuplicateMessage):
            store.add_messages([order(nonce=message.nonce)], 2)
        assert store.open_round() == 2
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    conn.close()
