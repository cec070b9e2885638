"""The matcher's store: SQLite in WAL mode.

Every accepted order and bid is committed before the API answers, so an acknowledged message is
never lost. Rounds move through the states open -> cleared -> submitted -> confirmed (or failed);
the transaction hash of each batch is committed *before* the transaction is broadcast, so that
after a crash the matcher can reconcile every submitted round against the chain before it sends
anything new.
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
    received_at REAL NOT NULL
);
-- The round snapshot reads every open message of a kind; keyed without the market, new messages
-- append to one place in this index instead of landing in one of 100 market groups.
DROP INDEX IF EXISTS messages_open;
CREATE INDEX IF NOT EXISTS messages_open_kind ON messages (status, kind);
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
    tx_hash   TEXT,
    gas_used  INTEGER,
    state     TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'confirmed')),
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

    @property
    def total(self) -> int:
        return self.message.units if self.kind is MessageKind.ORDER else self.message.capacity

    @property
    def remaining(self) -> int:
        return self.total - self.filled


@dataclass(frozen=True)
class StoredBatch:
    round_id: int
    batch: int
    payload: dict[str, Any]
    tx_hash: str | None
    gas_used: int | None
    state: str


@dataclass(frozen=True)
class StoredRound:
    id: int
    state: RoundState
    opened_at: float
    cleared_at: float | None
    confirmed_at: float | None
    clearing: dict[str, Any] | None
    error: str | None
    batches: tuple[StoredBatch, ...]


@dataclass
class _PendingWrite:
    rows: list[tuple]
    done: bool = False
    error: Exception | None = None


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
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Brings a store made by an earlier version up to date: messages gained their nonce (as
        decimal text: a uint256 does not fit SQLite's integers), unique among open messages."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
        if "nonce" not in columns:
            self._db.execute("ALTER TABLE messages ADD COLUMN nonce TEXT")
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

    def close(self) -> None:
        with self._lock:
            self._db.close()

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

    def add_messages(self, items: Iterable[tuple[MessageKind, str, SignedMessage, bytes, dict | None]]) -> None:
        """Commits messages durably. Raises DuplicateMessage (and commits none of `items`) if any
        digest is already stored.

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
                message.units if kind is MessageKind.ORDER else message.capacity,
                min(message.deadline, _INT64_MAX),
                message.model_dump_json(by_alias=True),
                signature,
                to_json(receipt).decode() if receipt is not None else None,
                now,
                str(message.nonce),
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
                        " receipt, received_at, nonce) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        self, kind: MessageKind, digest: str, message: SignedMessage, signature: bytes, receipt: dict | None = None
    ) -> None:
        self.add_messages([(kind, digest, message, signature, receipt)])

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
        self, kind: MessageKind, now: int, market: str | None = None, received_by: float | None = None
    ) -> list[StoredMessage]:
        """Open messages of `kind` whose deadline has not passed, oldest first; with `received_by`,
        only those received by then (a round's snapshot, rebuilt after a crash)."""
        query = "SELECT * FROM messages WHERE status = 'open' AND kind = ? AND deadline >= ?"
        args: list[Any] = [kind.value, now]
        if received_by is not None:
            query += " AND received_at <= ?"
            args.append(received_by)
        if market is not None:
            query += " AND market = ?"
            args.append(market)
        with self._reading() as db:
            rows = db.execute(query + " ORDER BY received_at, digest", args).fetchall()
        return [_message(r) for r in rows]

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
            rows = db.execute(query + " ORDER BY received_at, rowid LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        return [_message(r) for r in rows]

    def open_nonce_holders(self, pairs: Sequence[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, int]]:
        """For each (signer, nonce) held by an open message: (its digest, its deadline)."""
        found: dict[tuple[str, int], tuple[str, int]] = {}
        unique = list(dict.fromkeys(pairs))
        with self._reading() as db:
            for start in range(0, len(unique), _SQL_VARIABLES // 2):
                chunk = unique[start:start + _SQL_VARIABLES // 2]
                rows = db.execute(
                    "SELECT signer, nonce, digest, deadline FROM messages WHERE status = 'open' AND (signer, nonce) IN"
                    f" (VALUES {','.join(['(?, ?)'] * len(chunk))})",
                    [value for signer, nonce in chunk for value in (signer, str(nonce))],
                ).fetchall()
                found.update(((row[0], int(row[1])), (row[2], row[3])) for row in rows)
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

    def close_intake(self, round_id: int) -> None:
        """Stops `round_id` taking messages; the next `open_round` creates a new round."""
        with self._tx() as db:
            db.execute("UPDATE rounds SET closed_at = ? WHERE id = ? AND state = 'open'", (time.time(), round_id))

    def reopen_intake(self, round_id: int) -> None:
        """Lets a round that found nothing to match take messages again, keeping its id."""
        with self._tx() as db:
            db.execute("UPDATE rounds SET closed_at = NULL WHERE id = ? AND state = 'open'", (round_id,))

    def closed_uncleared_rounds(self) -> list[int]:
        """Rounds whose intake closed but whose clearing was never recorded (a crash in between)."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM rounds WHERE state = 'open' AND closed_at IS NOT NULL").fetchall()
        return [r[0] for r in rows]

    def record_clearing(self, round_id: int, clearing: dict[str, Any], batches: list[dict[str, Any]]) -> None:
        """Stores a round's clearing result and its batches; the round becomes `cleared`."""
        with self._tx() as db:
            db.execute(
                "UPDATE rounds SET state = 'cleared', cleared_at = ?, clearing = ? WHERE id = ? AND state = 'open'",
                (time.time(), json.dumps(clearing), round_id),
            )
            db.executemany(
                "INSERT INTO batches (round_id, batch, payload, state) VALUES (?, ?, ?, 'pending')",
                [(round_id, i, json.dumps(b)) for i, b in enumerate(batches)],
            )

    def replace_batch_payload(self, round_id: int, batch: int, payload: dict[str, Any]) -> None:
        """Rewrites a batch that has not landed (a dropped message's matches left it)."""
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET payload = ? WHERE round_id = ? AND batch = ? AND state != 'confirmed'",
                (json.dumps(payload), round_id, batch),
            )

    def reset_clearing(self, round_id: int) -> None:
        """Forgets a round's clearing and batches, none of which landed, so it can be cleared again."""
        with self._tx() as db:
            db.execute("DELETE FROM batches WHERE round_id = ?", (round_id,))
            db.execute(
                "UPDATE rounds SET state = 'open', clearing = NULL, cleared_at = NULL WHERE id = ?"
                " AND state IN ('cleared', 'submitted')",
                (round_id,),
            )

    def closed_at(self, round_id: int) -> float | None:
        with self._reading() as db:
            row = db.execute("SELECT closed_at FROM rounds WHERE id = ?", (round_id,)).fetchone()
        return row[0] if row else None

    def record_sent(self, round_id: int, batch: int, tx_hash: str) -> None:
        """Called before the transaction is broadcast: the hash is the crash-recovery handle."""
        with self._tx() as db:
            db.execute("UPDATE rounds SET state = 'submitted' WHERE id = ? AND state IN ('cleared', 'submitted')",
                       (round_id,))
            db.execute("UPDATE batches SET tx_hash = ?, state = 'sent' WHERE round_id = ? AND batch = ?",
                       (tx_hash, round_id, batch))

    def record_batch_confirmed(self, round_id: int, batch: int, gas_used: int | None, tx_hash: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET state = 'confirmed', gas_used = ?, tx_hash = COALESCE(?, tx_hash)"
                " WHERE round_id = ? AND batch = ?",
                (gas_used, tx_hash, round_id, batch),
            )

    def confirm_round(self, round_id: int, fills: dict[str, int]) -> None:
        """Marks the round confirmed and adds its fills to the messages, in one transaction."""
        with self._tx() as db:
            state = db.execute("SELECT state FROM rounds WHERE id = ?", (round_id,)).fetchone()["state"]
            if state == RoundState.CONFIRMED:
                return  # idempotent: fills are applied once
            for digest, units in fills.items():
                db.execute(
                    "UPDATE messages SET filled = filled + ?,"
                    " status = CASE WHEN filled + ? >= total THEN 'filled' ELSE status END WHERE digest = ?",
                    (units, units, digest),
                )
            db.execute("UPDATE rounds SET state = 'confirmed', confirmed_at = ? WHERE id = ?", (time.time(), round_id))
        self._forget_reservations()

    def fail_round(self, round_id: int, error: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE rounds SET state = 'failed', error = ? WHERE id = ?", (error, round_id))

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
            batches=tuple(
                StoredBatch(b["round_id"], b["batch"], json.loads(b["payload"]), b["tx_hash"], b["gas_used"], b["state"])
                for b in batches
            ),
        )

    def last_prices(self) -> dict[str, tuple[int, int]]:
        """market -> (round id, clearing price) of the latest confirmed round that traded in it."""
        prices: dict[str, tuple[int, int]] = {}
        for stored in self.rounds_in(RoundState.CONFIRMED):
            for market, price in (stored.clearing or {}).get("prices", {}).items():
                prices[market] = (stored.id, int(price))
        return prices


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
    )
