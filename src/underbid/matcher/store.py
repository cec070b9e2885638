"""The matcher's store: SQLite in WAL mode.

Every accepted order and bid is committed before the API answers, so an acknowledged message is
never lost, with the round it was taken in (`intake_round`), from which a round's snapshot is
rebuilt after a crash. Rounds move open -> cleared -> submitted -> confirmed (or failed), and each
of their batches pending -> signed -> mined, or dead (known never to land); every transition is
one store transaction. A batch's signed raw transaction and its nonce are committed *before* it
is broadcast, so after a crash or a lost answer the same transaction is sent again and the chain
(receipt, nonce, deadline) says what became of it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from underbid.protocol.eip712 import Bid, Order, SignedMessage
from underbid.protocol.pricing import NoMatch, Unmatched

_INT64_MAX = 2**63 - 1
# Bound variables per statement; SQLite's default limit is 32,766 since 3.32, 999 before.
_SQL_VARIABLES = 900

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    digest      TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('order', 'bid')),
    signer      TEXT NOT NULL,
    nonce       TEXT,
    market      TEXT NOT NULL,
    total       INTEGER NOT NULL,
    filled      INTEGER NOT NULL DEFAULT 0,
    deadline    INTEGER NOT NULL,
    status      TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'filled', 'dropped')),
    reason      TEXT,
    body        TEXT NOT NULL,
    signature   BLOB NOT NULL,
    receipt     TEXT,
    received_at REAL NOT NULL,
    intake_round INTEGER,
    unmatched_round  INTEGER,
    unmatched_reason TEXT,
    unmatched_detail TEXT,
    unmatched_matched INTEGER,
    unmatched_wanted INTEGER
);
-- The round snapshot reads every open message of a kind; keyed without the market, new messages
-- append to one place in this index instead of landing in one of 100 market groups.
DROP INDEX IF EXISTS messages_open;
CREATE INDEX IF NOT EXISTS messages_open_kind ON messages (status, kind);
-- A round close lists the markets with open messages of each kind without reading the messages.
CREATE INDEX IF NOT EXISTS messages_open_market ON messages (status, kind, market, deadline, intake_round);
-- Covers live_bid_capacity (checked for every bid), so the sum never reads the table itself.
DROP INDEX IF EXISTS messages_signer;
CREATE INDEX IF NOT EXISTS messages_reserved ON messages (signer, kind, status, deadline, total, filled);
CREATE TABLE IF NOT EXISTS markets (
    market TEXT PRIMARY KEY,
    spec   TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    id           INTEGER PRIMARY KEY,
    state        TEXT NOT NULL CHECK (state IN ('open', 'cleared', 'submitted', 'confirmed', 'failed')),
    opened_at    REAL NOT NULL,
    closed_at    REAL,
    cleared_at   REAL,
    confirmed_at REAL,
    clearing     TEXT,
    error        TEXT
);
CREATE TABLE IF NOT EXISTS batches (
    round_id  INTEGER NOT NULL REFERENCES rounds (id),
    batch     INTEGER NOT NULL,
    payload   TEXT NOT NULL,
    state     TEXT NOT NULL CHECK (state IN ('pending', 'signed', 'mined', 'dead')),
    deadline  INTEGER,
    tx_nonce  INTEGER,
    raw_tx    BLOB,
    tx_hash   TEXT,
    gas_used  INTEGER,
    fills     TEXT,
    reason    TEXT,
    PRIMARY KEY (round_id, batch)
);
"""


class MessageKind(StrEnum):
    ORDER = "order"
    BID = "bid"

    @property
    def model(self) -> type[SignedMessage]:
        return Order if self is MessageKind.ORDER else Bid


class RoundState(StrEnum):
    OPEN = "open"
    CLEARED = "cleared"
    SUBMITTED = "submitted"
    CONFIRMED = "confirmed"
    FAILED = "failed"


class BatchState(StrEnum):
    """Where one `settle` transaction of a round stands."""

    PENDING = "pending"  # cut from the clearing, not signed yet
    SIGNED = "signed"  # nonce and raw transaction stored; broadcast, maybe more than once
    MINED = "mined"  # landed: its LeaseOpened fills are applied to the messages
    DEAD = "dead"  # known never to land: reverted, its nonce used by another transaction, or expired


@dataclass(frozen=True)
class Match:
    """One match of a clearing: `units` of `order` served by `bid` in `market`."""

    order: str
    bid: str
    units: int
    market: str


@dataclass(frozen=True)
class BatchPayload:
    """What one batch settles: its matches and the clearing prices of their markets."""

    matches: tuple[Match, ...]
    prices: dict[str, int]

    @classmethod
    def of(cls, matches: Sequence[Match], prices: dict[str, int]) -> BatchPayload:
        """A payload carrying only the prices of the markets its matches trade in."""
        markets = {m.market for m in matches}
        return cls(tuple(matches), {k: v for k, v in prices.items() if k in markets})

    def without(self, digest: str) -> BatchPayload:
        """This payload less every match of the message `digest`."""
        return BatchPayload.of([m for m in self.matches if digest not in (m.order, m.bid)], self.prices)

    @property
    def digests(self) -> list[str]:
        """The orders, then the bids, in first-appearance order (their index in `settle`)."""
        orders = list(dict.fromkeys(m.order for m in self.matches))
        return orders + list(dict.fromkeys(m.bid for m in self.matches))

    def to_json(self) -> str:
        return json.dumps({
            "matches": [{"order": m.order, "bid": m.bid, "units": m.units, "market": m.market} for m in self.matches],
            "prices": {k: str(v) for k, v in self.prices.items()},
        })

    @classmethod
    def from_json(cls, text: str) -> BatchPayload:
        raw = json.loads(text)
        return cls(tuple(Match(**m) for m in raw["matches"]), {k: int(v) for k, v in raw["prices"].items()})


@dataclass(frozen=True)
class SignedTx:
    """A signed `settle` transaction, stored before it is first broadcast."""

    nonce: int | None  # None only for batches recorded by versions that stored the hash alone
    raw: bytes | None
    tx_hash: str
    deadline: int


class DuplicateMessage(Exception):
    """The message (by digest) is already in the store."""


@dataclass(frozen=True)
class StoredMessage:
    kind: MessageKind
    digest: str
    message: SignedMessage
    signature: bytes
    filled: int
    status: str
    reason: str | None
    receipt: dict[str, Any] | None
    received_at: float
    #: an order's outcome in the last round that left it (partly) unmatched; None for bids, and
    #: for orders no round has passed over (or that the last round served in full)
    unmatched: Unmatched | None = None

    @property
    def order(self) -> Order:
        """The message as an order (it must be one)."""
        assert isinstance(self.message, Order), self.kind
        return self.message

    @property
    def bid(self) -> Bid:
        """The message as a bid (it must be one)."""
        assert isinstance(self.message, Bid), self.kind
        return self.message

    @property
    def total(self) -> int:
        return _total(self.message)

    @property
    def remaining(self) -> int:
        return self.total - self.filled


@dataclass(frozen=True)
class StoredBatch:
    """One batch of a round, as stored."""

    round_id: int
    batch: int
    payload: BatchPayload
    state: BatchState
    tx: SignedTx | None
    gas_used: int | None
    fills: dict[str, int] | None
    reason: str | None

    @property
    def tx_hash(self) -> str | None:
        return self.tx.tx_hash if self.tx else None


@dataclass(frozen=True)
class StoredRound:
    id: int
    state: RoundState
    opened_at: float
    cleared_at: float | None
    confirmed_at: float | None
    clearing: dict[str, Any] | None
    error: str | None
    closed_at: float | None
    batches: tuple[StoredBatch, ...]


@dataclass
class _PendingWrite:
    rows: list[tuple]
    done: bool = False
    error: BaseException | None = None


class Store:
    """A SQLite database shared by the API threads and the round worker.

    One connection, serialized by a lock: SQLite allows one writer at a time anyway, and every
    statement here is short. `synchronous=FULL` makes each commit durable before it returns.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._pending_lock = threading.Lock()
        self._pending: list[_PendingWrite] = []
        self._readers = threading.local()
        #: Every reader connection opened, so `close` closes them all (threads do not).
        self._reader_dbs: list[sqlite3.Connection] = []
        #: provider -> (chain time, units its open bids reserved at that time): spares a SQL sum
        #: over the provider's open bids for every new bid. The store's own inserts add to it;
        #: fills and drops clear it (and bump the generation, so a sum read meanwhile is not kept).
        self._reserved: dict[str, tuple[int, int]] = {}
        self._reserved_lock = threading.Lock()
        self._reserved_generation = 0
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # Inserts land at random places in the digest index; a 64 MiB page cache keeps them in memory.
        self._db.execute("PRAGMA cache_size=-65536")
        self._db.execute("PRAGMA wal_autocheckpoint=10000")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate_batches()
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Brings a store made by an earlier version up to date: messages gained their nonce (as
        decimal text: a uint256 does not fit SQLite's integers), unique among open messages."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
        if "nonce" not in columns:
            self._db.execute("ALTER TABLE messages ADD COLUMN nonce TEXT")
        if "intake_round" not in columns:  # older rows keep NULL: they belong to every round
            self._db.execute("ALTER TABLE messages ADD COLUMN intake_round INTEGER")
        # Why no match: older rows keep NULL (not told yet); the next round that passes over them tells.
        for column, kind in _UNMATCHED_COLUMNS:
            if column not in columns:
                self._db.execute(f"ALTER TABLE messages ADD COLUMN {column} {kind}")
        rows = self._db.execute("SELECT digest, body FROM messages WHERE nonce IS NULL").fetchall()
        if rows:
            self._db.executemany(
                "UPDATE messages SET nonce = ? WHERE digest = ?",
                [(str(json.loads(body)["nonce"]), digest) for digest, body in rows],
            )
        # One open message per (signer, nonce): the contract lets any number of messages sharing a
        # nonce fill no more than one of them, so a second one could only displace the first.
        # The index also settles two requests racing in with the same nonce.
        self._db.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS messages_open_nonce ON messages (signer, nonce) WHERE status = 'open'"
        )

    def _migrate_batches(self) -> None:
        """Rebuilds a batches table of the earlier layout (hash only; pending/sent/confirmed).

        A sent batch, or a landed one of a round not yet confirmed (whose fills the earlier
        version applied only at confirmation), becomes `signed` with no raw transaction: the
        reconciler then asks the chain for its receipt and applies the fills of what landed.
        """
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(batches)")}
        if not columns or "raw_tx" in columns:
            return
        self._db.execute("ALTER TABLE batches RENAME TO batches_v1")
        self._db.executescript(_SCHEMA)
        self._db.execute(
            "INSERT INTO batches (round_id, batch, payload, state, tx_hash, gas_used)"
            " SELECT b.round_id, b.batch, b.payload,"
            " CASE WHEN b.state = 'confirmed' AND r.state = 'confirmed' THEN 'mined'"
            "      WHEN b.tx_hash IS NOT NULL THEN 'signed' ELSE 'pending' END,"
            " b.tx_hash, b.gas_used FROM batches_v1 b JOIN rounds r ON r.id = b.round_id"
        )
        self._db.execute("DROP TABLE batches_v1")

    def close(self) -> None:
        """Closes the writer and every reader connection."""
        with self._lock:
            self._db.close()
            for db in self._reader_dbs:
                db.close()
            self._reader_dbs.clear()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads. In WAL mode readers never wait for the writer, so each thread
        reads through its own connection instead of queueing behind a commit's fsync."""
        if self.path == ":memory:":
            with self._lock:
                yield self._db
            return
        db = getattr(self._readers, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.row_factory = sqlite3.Row
            # Each batch looks up its digests at random places in the index: keep it in memory.
            db.execute("PRAGMA cache_size=-16384")
            self._readers.db = db
            with self._lock:
                self._reader_dbs.append(db)
        yield db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ----- messages -----

    def add_messages(
        self, items: Iterable[tuple[MessageKind, str, SignedMessage, bytes, dict | None]], round_id: int | None = None
    ) -> None:
        """Commits messages durably, taken in round `round_id`. Raises DuplicateMessage (and
        commits none of `items`) if any digest is already stored.

        Group commit: concurrent callers queue their rows and whichever holds the commit lock
        writes every queued request in one transaction, one savepoint each, so a burst of
        requests shares one fsync instead of paying one each. Each caller returns only after
        the transaction holding its rows has committed.
        """
        now = time.time()
        rows = [
            (
                digest,
                kind.value,
                message.signer,
                message.market,
                _total(message),
                min(message.deadline, _INT64_MAX),
                message.model_dump_json(by_alias=True),
                signature,
                to_json(receipt).decode() if receipt is not None else None,
                now,
                str(message.nonce),
                round_id,
            )
            for kind, digest, message, signature, receipt in items
        ]
        request = _PendingWrite(rows)
        with self._pending_lock:
            self._pending.append(request)
        with self._lock:
            if not request.done:
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._commit_group(batch)
        if request.error is not None:
            raise request.error

    def _commit_group(self, batch: list[_PendingWrite]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for i, request in enumerate(batch):
                db.execute(f"SAVEPOINT w{i}")
                try:
                    db.executemany(
                        "INSERT INTO messages (digest, kind, signer, market, total, deadline, body, signature,"
                        " receipt, received_at, nonce, intake_round) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        request.rows,
                    )
                except sqlite3.IntegrityError as exc:
                    db.execute(f"ROLLBACK TO w{i}")
                    request.error = DuplicateMessage(str(exc))
                db.execute(f"RELEASE w{i}")
            db.execute("COMMIT")
            for request in batch:
                if request.error is None:
                    self._reserve(request.rows)
        except BaseException as exc:
            db.execute("ROLLBACK")
            for request in batch:
                request.error = request.error or exc
            raise
        finally:
            for request in batch:
                request.done = True

    def add_message(
        self, kind: MessageKind, digest: str, message: SignedMessage, signature: bytes, receipt: dict | None = None,
        round_id: int | None = None,
    ) -> None:
        self.add_messages([(kind, digest, message, signature, receipt)], round_id)

    def get_message(self, digest: str, kind: MessageKind | None = None) -> StoredMessage | None:
        with self._reading() as db:
            row = db.execute("SELECT * FROM messages WHERE digest = ?", (digest.lower(),)).fetchone()
        if row is None or (kind is not None and row["kind"] != kind.value):
            return None
        return _message(row)

    def stored_digests(self, digests: Sequence[str], *, only_open: bool = False) -> set[str]:
        """Those of `digests` stored (with `only_open`, still open): one query per 900 digests."""
        found: set[str] = set()
        status = " AND status = 'open'" if only_open else ""
        with self._reading() as db:
            for start in range(0, len(digests), _SQL_VARIABLES):
                chunk = [d.lower() for d in digests[start:start + _SQL_VARIABLES]]
                rows = db.execute(
                    f"SELECT digest FROM messages WHERE digest IN ({','.join('?' * len(chunk))}){status}", chunk
                ).fetchall()
                found.update(row[0] for row in rows)
        return found

    def open_messages(
        self, kind: MessageKind, now: int, market: str | None = None, round_upto: int | None = None,
        markets: Sequence[str] | None = None,
    ) -> list[StoredMessage]:
        """Open messages of `kind` whose deadline has not passed, oldest first; with `round_upto`,
        only those taken in that round or earlier (a round's snapshot, the same after a crash);
        with `market` or `markets`, only those of that market or of those markets."""
        query, args = self._open_filter(kind, now, round_upto)
        if market is not None:
            markets = [market]
        if markets is None:
            with self._reading() as db:
                rows = db.execute(f"SELECT * FROM messages WHERE {query} ORDER BY received_at, digest", args).fetchall()
        else:
            rows = []
            with self._reading() as db:
                for start in range(0, len(markets), _SQL_VARIABLES):
                    chunk = list(markets[start:start + _SQL_VARIABLES])
                    rows += db.execute(
                        f"SELECT * FROM messages WHERE {query} AND market IN ({','.join('?' * len(chunk))})",
                        [*args, *chunk],
                    ).fetchall()
            rows.sort(key=lambda row: (row["received_at"], row["digest"]))
        return [_message(r) for r in rows]

    def open_markets(self, kind: MessageKind, now: int, round_upto: int | None = None) -> set[str]:
        """The markets with an open message of `kind` (filtered as `open_messages`), from the index
        alone: a round reads only the messages of markets where both sides are open."""
        query, args = self._open_filter(kind, now, round_upto)
        with self._reading() as db:
            return {row[0] for row in db.execute(f"SELECT DISTINCT market FROM messages WHERE {query}", args)}

    def count_open(self, now: int, markets: Sequence[str], round_upto: int | None = None) -> int:
        """How many open messages of either kind (filtered as `open_messages`) `markets` hold."""
        total = 0
        with self._reading() as db:
            for kind in MessageKind:
                query, args = self._open_filter(kind, now, round_upto)
                for start in range(0, len(markets), _SQL_VARIABLES):
                    chunk = list(markets[start:start + _SQL_VARIABLES])
                    total += db.execute(
                        f"SELECT COUNT(*) FROM messages WHERE {query} AND market IN ({','.join('?' * len(chunk))})",
                        [*args, *chunk],
                    ).fetchone()[0]
        return total

    @staticmethod
    def _open_filter(kind: MessageKind, now: int, round_upto: int | None) -> tuple[str, list[Any]]:
        query = "status = 'open' AND kind = ? AND deadline >= ?"
        args: list[Any] = [kind.value, now]
        if round_upto is not None:
            query += " AND (intake_round IS NULL OR intake_round <= ?)"
            args.append(round_upto)
        return query, args

    def messages_of(
        self, signer: str, kind: MessageKind | None = None, *, status: str | None = None,
        limit: int = -1, offset: int = 0,
    ) -> list[StoredMessage]:
        """A signer's messages, oldest first; optionally of one kind and status, one page of them."""
        query, args = "SELECT * FROM messages WHERE signer = ?", [signer]
        if kind is not None:
            query += " AND kind = ?"
            args.append(kind.value)
        if status is not None:
            query += " AND status = ?"
            args.append(status)
        with self._reading() as db:
            query += " ORDER BY received_at, rowid LIMIT ? OFFSET ?"
            rows = db.execute(query, [*args, limit, offset]).fetchall()
        return [_message(r) for r in rows]

    def open_nonce_holders(self, pairs: Sequence[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, int]]:
        """For each (signer, nonce) held by an open message: (its digest, its deadline).

        One indexed lookup per signer (``signer = ? AND nonce IN (...)`` searches the partial
        unique index): the row-value form ``(signer, nonce) IN (VALUES ...)`` made SQLite scan the
        whole index, ~0.4 s per request with 200,000 open messages."""
        found: dict[tuple[str, int], tuple[str, int]] = {}
        by_signer: dict[str, list[str]] = {}
        for signer, nonce in dict.fromkeys(pairs):
            by_signer.setdefault(signer, []).append(str(nonce))
        with self._reading() as db:
            for signer, nonces in by_signer.items():
                for start in range(0, len(nonces), _SQL_VARIABLES):
                    chunk = nonces[start:start + _SQL_VARIABLES]
                    rows = db.execute(
                        "SELECT nonce, digest, deadline FROM messages WHERE status = 'open' AND signer = ?"
                        f" AND nonce IN ({','.join('?' * len(chunk))})",
                        [signer, *chunk],
                    ).fetchall()
                    found.update(((signer, int(row[0])), (row[1], row[2])) for row in rows)
        return found

    def open_order_terms(self, buyer: str, now: int) -> list[tuple[int, int, int]]:
        """(units left, maxPrice, duration) of the buyer's open, unexpired orders: the escrow
        they reserve at their max prices."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT total - filled, body FROM messages"
                " WHERE kind = 'order' AND status = 'open' AND signer = ? AND deadline >= ?",
                (buyer, now),
            ).fetchall()
        terms = []
        for left, body in rows:
            fields = json.loads(body)
            terms.append((int(left), int(fields["maxPrice"]), int(fields["duration"])))
        return terms

    def live_bid_capacity(self, provider: str, now: int) -> int:
        """Units the provider's open, unexpired bids can still fill: the stake they reserve."""
        with self._reserved_lock:
            cached = self._reserved.get(provider)
            if cached is not None and cached[0] == now:
                return cached[1]
            generation = self._reserved_generation
        with self._reading() as db:
            row = db.execute(
                "SELECT COALESCE(SUM(total - filled), 0) FROM messages"
                " WHERE kind = 'bid' AND status = 'open' AND signer = ? AND deadline >= ?",
                (provider, now),
            ).fetchone()
        reserved = int(row[0])
        with self._reserved_lock:
            if generation == self._reserved_generation:
                self._reserved[provider] = (now, reserved)
        return reserved

    def _reserve(self, rows: list[tuple]) -> None:
        """Adds newly committed bids to the cached reservations they count in."""
        with self._reserved_lock:
            for row in rows:
                if row[1] == "bid" and (cached := self._reserved.get(row[2])) is not None and row[5] >= cached[0]:
                    self._reserved[row[2]] = (cached[0], cached[1] + row[4])

    def _forget_reservations(self) -> None:
        with self._reserved_lock:
            self._reserved.clear()
            self._reserved_generation += 1

    def note_unmatched(self, notes: dict[str, Unmatched], served: Sequence[str] = ()) -> None:
        """Records why each order in `notes` (by digest) was left with units unmatched, and clears
        the note of the orders in `served` (a later round served them in full): one transaction."""
        with self._tx() as db:
            db.executemany(
                "UPDATE messages SET unmatched_round = ?, unmatched_reason = ?, unmatched_detail = ?,"
                " unmatched_matched = ?, unmatched_wanted = ? WHERE digest = ? AND kind = 'order'",
                [(n.round, n.reason.value, n.detail, n.matched, n.wanted, digest.lower())
                 for digest, n in notes.items()],
            )
            db.executemany(
                "UPDATE messages SET unmatched_round = NULL, unmatched_reason = NULL, unmatched_detail = NULL,"
                " unmatched_matched = NULL, unmatched_wanted = NULL WHERE digest = ? AND unmatched_round IS NOT NULL",
                [(digest.lower(),) for digest in served if digest not in notes],
            )

    def note_no_bids(self, round_id: int, now: int, markets: Sequence[str], detail: str) -> None:
        """Tells every open order of `markets` taken in `round_id` or before (filtered as
        `open_messages`) that round `round_id` found no bid in its market."""
        query, args = self._open_filter(MessageKind.ORDER, now, round_id)
        with self._tx() as db:
            for start in range(0, len(markets), _SQL_VARIABLES):
                chunk = list(markets[start:start + _SQL_VARIABLES])
                db.execute(
                    "UPDATE messages SET unmatched_round = ?, unmatched_reason = ?, unmatched_detail = ?,"
                    " unmatched_matched = 0, unmatched_wanted = total - filled"
                    f" WHERE {query} AND market IN ({','.join('?' * len(chunk))})",
                    [round_id, NoMatch.NO_BIDS.value, detail, *args, *chunk],
                )

    def drop(self, digest: str, reason: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE messages SET status = 'dropped', reason = ? WHERE digest = ?", (reason, digest))
        self._forget_reservations()

    # ----- markets -----

    def name_markets(self, specs: dict[str, str]) -> None:
        """Remembers each market's canonical spec string (market id -> spec), for `GET /markets`."""
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO markets (market, spec) VALUES (?, ?)", specs.items())

    def market_summary(self, now: int) -> list[dict[str, Any]]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT m.market, k.spec,"
                " SUM(m.kind = 'order' AND m.status = 'open' AND m.deadline >= ?) AS open_orders,"
                " SUM(m.kind = 'bid' AND m.status = 'open' AND m.deadline >= ?) AS open_bids"
                " FROM messages m LEFT JOIN markets k ON k.market = m.market GROUP BY m.market ORDER BY m.market",
                (now, now),
            ).fetchall()
        return [dict(r) for r in rows]

    # ----- rounds -----

    def current_round(self) -> int | None:
        """The id of the round taking new messages, if one exists (a read: creates nothing)."""
        with self._reading() as db:
            row = db.execute(
                "SELECT id FROM rounds WHERE state = 'open' AND closed_at IS NULL ORDER BY id LIMIT 1"
            ).fetchone()
        return int(row[0]) if row else None

    def open_round(self, min_id: int = 1) -> int:
        """The id of the round taking new messages, creating one if none is: the next id after
        every round stored, and at least `min_id` (round ids must exceed the matcher's last round
        on chain)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM rounds WHERE state = 'open' AND closed_at IS NULL ORDER BY id LIMIT 1"
            ).fetchone()
            if row is not None:
                return int(row["id"])
            next_id = max(min_id, db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM rounds").fetchone()[0])
            db.execute("INSERT INTO rounds (id, state, opened_at) VALUES (?, 'open', ?)", (next_id, time.time()))
            return next_id

    def close_intake(self, round_id: int) -> int:
        """Stops `round_id` taking messages and opens the next round; returns the next round's id."""
        with self._tx() as db:
            db.execute("UPDATE rounds SET closed_at = ? WHERE id = ? AND state = 'open'", (time.time(), round_id))
        return self.open_round()

    def reopen_intake(self, round_id: int, next_round: int) -> int:
        """Lets a round that found nothing to match take messages again, keeping its id; the
        messages taken meanwhile by `next_round` (still empty) move back to it. Returns its id."""
        with self._tx() as db:
            db.execute("UPDATE rounds SET closed_at = NULL WHERE id = ? AND state = 'open'", (round_id,))
            if next_round != round_id:
                db.execute("UPDATE messages SET intake_round = ? WHERE intake_round = ?", (round_id, next_round))
                db.execute("DELETE FROM rounds WHERE id = ? AND state = 'open'", (next_round,))
        return round_id

    def closed_uncleared_rounds(self) -> list[int]:
        """Rounds whose intake closed but whose clearing was never recorded (a crash in between)."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT id FROM rounds WHERE state = 'open' AND closed_at IS NOT NULL ORDER BY id"
            ).fetchall()
        return [r[0] for r in rows]

    def record_clearing(self, round_id: int, clearing: dict[str, Any], batches: Sequence[BatchPayload]) -> None:
        """open -> cleared: stores a round's clearing result and its batches (all pending)."""
        with self._tx() as db:
            db.execute(
                "UPDATE rounds SET state = 'cleared', cleared_at = ?, clearing = ? WHERE id = ? AND state = 'open'",
                (time.time(), json.dumps(clearing), round_id),
            )
            db.executemany(
                "INSERT INTO batches (round_id, batch, payload, state) VALUES (?, ?, ?, 'pending')",
                [(round_id, i, b.to_json()) for i, b in enumerate(batches)],
            )

    def record_signed(self, round_id: int, batch: int, payload: BatchPayload, tx: SignedTx) -> None:
        """pending -> signed, before the first broadcast: the raw transaction is the recovery handle,
        and the payload stored is exactly what it carries."""
        with self._tx() as db:
            db.execute("UPDATE rounds SET state = 'submitted' WHERE id = ? AND state IN ('cleared', 'submitted')",
                       (round_id,))
            db.execute(
                "UPDATE batches SET state = 'signed', payload = ?, deadline = ?, tx_nonce = ?, raw_tx = ?, tx_hash = ?,"
                " reason = NULL WHERE round_id = ? AND batch = ? AND state = 'pending'",
                (payload.to_json(), tx.deadline, tx.nonce, tx.raw, tx.tx_hash, round_id, batch),
            )

    def record_mined(self, round_id: int, batch: int, gas_used: int, fills: dict[str, int]) -> None:
        """signed (or dead, if the chain shows it landed after all) -> mined, and the fills of what
        landed (its LeaseOpened events) added to the messages, in one transaction; applied once (a
        second call finds the batch mined)."""
        with self._tx() as db:
            moved = db.execute(
                "UPDATE batches SET state = 'mined', gas_used = ?, fills = ? WHERE round_id = ? AND batch = ?"
                " AND state IN ('signed', 'dead')",
                (gas_used, json.dumps(fills), round_id, batch),
            ).rowcount
            if moved:
                db.executemany(
                    "UPDATE messages SET filled = filled + ?,"
                    " status = CASE WHEN filled + ? >= total THEN 'filled' ELSE status END WHERE digest = ?",
                    [(units, units, digest) for digest, units in fills.items()],
                )
        self._forget_reservations()

    def record_dead(self, round_id: int, batch: int, reason: str) -> None:
        """signed (or pending, in a round the chain closed) -> dead: known never to land."""
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET state = 'dead', reason = ? WHERE round_id = ? AND batch = ? AND state IN"
                " ('signed', 'pending')",
                (reason, round_id, batch),
            )

    def retry_batch(self, round_id: int, batch: int) -> None:
        """dead -> pending: a later batch that never landed is signed again (its round still open)."""
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET state = 'pending', deadline = NULL, tx_nonce = NULL, raw_tx = NULL, tx_hash = NULL"
                " WHERE round_id = ? AND batch = ? AND state = 'dead'",
                (round_id, batch),
            )

    def drop_from_batch(self, round_id: int, batch: int, digest: str, reason: str, payload: BatchPayload) -> None:
        """Drops a message the chain refuses and rewrites the pending batch without its matches."""
        with self._tx() as db:
            db.execute("UPDATE messages SET status = 'dropped', reason = ? WHERE digest = ? AND status = 'open'",
                       (reason, digest))
            db.execute("UPDATE batches SET payload = ? WHERE round_id = ? AND batch = ? AND state = 'pending'",
                       (payload.to_json(), round_id, batch))
        self._forget_reservations()

    def reset_clearing(self, round_id: int, drop: str | None = None, reason: str = "") -> bool:
        """cleared/submitted -> open (intake closed): forgets a clearing none of whose batches
        landed or may still land, dropping the message `drop` if given, so the round is cleared
        again. Returns False (and changes nothing) if a batch is signed or mined."""
        with self._tx() as db:
            live = db.execute(
                "SELECT COUNT(*) FROM batches WHERE round_id = ? AND state IN ('signed', 'mined')", (round_id,)
            ).fetchone()[0]
            if live:
                return False
            if drop is not None:
                db.execute("UPDATE messages SET status = 'dropped', reason = ? WHERE digest = ? AND status = 'open'",
                           (reason, drop))
            db.execute("DELETE FROM batches WHERE round_id = ?", (round_id,))
            db.execute(
                "UPDATE rounds SET state = 'open', clearing = NULL, cleared_at = NULL,"
                " closed_at = COALESCE(closed_at, ?) WHERE id = ? AND state IN ('cleared', 'submitted')",
                (time.time(), round_id),
            )
        if drop is not None:
            self._forget_reservations()
        return True

    def confirm_round(self, round_id: int) -> None:
        """submitted -> confirmed: the round is final on chain; its fills went in batch by batch."""
        with self._tx() as db:
            db.execute("UPDATE rounds SET state = 'confirmed', confirmed_at = ? WHERE id = ? AND state != 'confirmed'",
                       (time.time(), round_id))

    def fail_round(self, round_id: int, error: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE rounds SET state = 'failed', error = ?, closed_at = COALESCE(closed_at, ?) WHERE id = ?",
                       (error, time.time(), round_id))

    def rounds_in(self, *states: RoundState) -> list[StoredRound]:
        marks = ",".join("?" * len(states))
        with self._reading() as db:
            ids = [r[0] for r in db.execute(f"SELECT id FROM rounds WHERE state IN ({marks}) ORDER BY id",
                                                  [s.value for s in states])]
        return [r for r in (self.get_round(i) for i in ids) if r is not None]

    def get_round(self, round_id: int) -> StoredRound | None:
        if not 0 <= round_id < 2**63:  # SQLite integers are signed 64-bit
            return None
        with self._reading() as db:
            row = db.execute("SELECT * FROM rounds WHERE id = ?", (round_id,)).fetchone()
            batches = db.execute("SELECT * FROM batches WHERE round_id = ? ORDER BY batch", (round_id,)).fetchall()
        if row is None:
            return None
        return StoredRound(
            id=row["id"],
            state=RoundState(row["state"]),
            opened_at=row["opened_at"],
            cleared_at=row["cleared_at"],
            confirmed_at=row["confirmed_at"],
            clearing=json.loads(row["clearing"]) if row["clearing"] else None,
            error=row["error"],
            closed_at=row["closed_at"],
            batches=tuple(_batch(b) for b in batches),
        )

    def market_book(self, market: str, round_upto: int) -> list[StoredMessage]:
        """The market's messages taken in `round_upto` or before that are not dropped, oldest first:
        the explorer rebuilds a round's order book from them (a read; never waits for the writer)."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT * FROM messages WHERE market = ? AND status != 'dropped'"
                " AND (intake_round IS NULL OR intake_round <= ?) ORDER BY received_at, digest",
                (market, round_upto),
            ).fetchall()
        return [_message(r) for r in rows]

    def last_prices(self) -> dict[str, LastPrice]:
        """market -> the clearing price (with its rule) of the latest confirmed round that traded in it."""
        prices: dict[str, LastPrice] = {}
        for stored in self.rounds_in(RoundState.CONFIRMED):
            clearing = stored.clearing or {}
            rules = clearing.get("price_rules", {})
            for market, price in clearing.get("prices", {}).items():
                prices[market] = LastPrice(stored.id, int(price), rules.get(market))
        return prices


@dataclass(frozen=True)
class LastPrice:
    """A market's latest clearing price: its round, the price and the rule that set it (None in
    rounds recorded before rules were)."""

    round: int
    price: int
    rule: str | None


def _total(message: SignedMessage) -> int:
    """Units an order asks for, or units a bid offers."""
    return message.units if isinstance(message, Order) else message.capacity if isinstance(message, Bid) else 0


def _batch(row: sqlite3.Row) -> StoredBatch:
    tx = None
    if row["tx_hash"] is not None:
        raw = bytes(row["raw_tx"]) if row["raw_tx"] is not None else None
        tx = SignedTx(row["tx_nonce"], raw, row["tx_hash"], row["deadline"] or 0)
    return StoredBatch(
        round_id=row["round_id"],
        batch=row["batch"],
        payload=BatchPayload.from_json(row["payload"]),
        state=BatchState(row["state"]),
        tx=tx,
        gas_used=row["gas_used"],
        fills=json.loads(row["fills"]) if row["fills"] else None,
        reason=row["reason"],
    )


def _message(row: sqlite3.Row) -> StoredMessage:
    kind = MessageKind(row["kind"])
    return StoredMessage(
        kind=kind,
        digest=row["digest"],
        message=kind.model.model_validate_json(row["body"]),
        signature=bytes(row["signature"]),
        filled=row["filled"],
        status=row["status"],
        reason=row["reason"],
        receipt=json.loads(row["receipt"]) if row["receipt"] else None,
        received_at=row["received_at"],
        unmatched=_unmatched(row),
    )


#: the columns of an order's last "why no match" (added to stores made before them by `_migrate`)
_UNMATCHED_COLUMNS = (
    ("unmatched_round", "INTEGER"), ("unmatched_reason", "TEXT"), ("unmatched_detail", "TEXT"),
    ("unmatched_matched", "INTEGER"), ("unmatched_wanted", "INTEGER"),
)


def _unmatched(row: sqlite3.Row) -> Unmatched | None:
    if row["unmatched_round"] is None:
        return None
    try:
        reason = NoMatch(row["unmatched_reason"])
    except ValueError:  # written by a newer version with a reason this one does not know
        return None
    return Unmatched(round=row["unmatched_round"], reason=reason, detail=row["unmatched_detail"] or "",
                     matched=row["unmatched_matched"] or 0, wanted=row["unmatched_wanted"] or 0)
