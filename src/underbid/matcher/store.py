"""The matcher's store: a SQLite file in WAL mode (the default), or a Postgres database that
several matcher processes share (`postgresql://…`), with one schema and numbered migrations.

Every accepted order and bid is committed before the API answers, so an acknowledged message is
never lost, with the round it was taken in (`intake_round`), from which a round's snapshot is
rebuilt after a crash. Rounds move open -> cleared -> submitted -> confirmed (or failed), and each
of their batches pending -> signed -> mined, or dead (known never to land); every transition is
one store transaction. A batch's signed raw transaction and its nonce are committed *before* it
is broadcast, so after a crash or a lost answer the same transaction is sent again and the chain
(receipt, nonce, deadline) says what became of it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from pydantic_core import to_json

from underbid.protocol.eip712 import Bid, Order, SignedMessage
from underbid.protocol.pricing import NoMatch, Unmatched

_INT64_MAX = 2**63 - 1
# Bound variables per statement; SQLite's default limit is 32,766 since 3.32, 999 before.
_SQL_VARIABLES = 900

# The schema, in numbered migrations shared by both back ends. Each step runs once, in one
# transaction, and is recorded in `schema_version`; a store is brought up to the last step when
# it is opened. `{int}`, `{real}`, `{blob}` are the dialect's column types (SQLite's `INTEGER`
# keeps `rounds.id` the rowid, as in stores made before versioning), `{message_seq}` a column
# only Postgres needs (messages in insertion order: SQLite has its rowid). Add a step to change
# the schema; never edit a step a store may have run.
_V1_TABLES = (
    """CREATE TABLE IF NOT EXISTS messages (
    digest      TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('order', 'bid')),
    signer      TEXT NOT NULL,
    nonce       TEXT,
    market      TEXT NOT NULL,
    total       {int} NOT NULL,
    filled      {int} NOT NULL DEFAULT 0,
    deadline    {int} NOT NULL,
    status      TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'filled', 'dropped')),
    reason      TEXT,
    body        TEXT NOT NULL,
    signature   {blob} NOT NULL,
    receipt     TEXT,
    received_at {real} NOT NULL,
    intake_round {int},
    unmatched_round  {int},
    unmatched_reason TEXT,
    unmatched_detail TEXT,
    unmatched_matched {int},
    unmatched_wanted {int}{message_seq}
)""",
    """CREATE TABLE IF NOT EXISTS markets (
    market TEXT PRIMARY KEY,
    spec   TEXT
)""",
    """CREATE TABLE IF NOT EXISTS rounds (
    id           {int} PRIMARY KEY,
    state        TEXT NOT NULL CHECK (state IN ('open', 'cleared', 'submitted', 'confirmed', 'failed')),
    opened_at    {real} NOT NULL,
    closed_at    {real},
    cleared_at   {real},
    confirmed_at {real},
    clearing     TEXT,
    error        TEXT
)""",
    """CREATE TABLE IF NOT EXISTS batches (
    round_id  {int} NOT NULL REFERENCES rounds (id),
    batch     {int} NOT NULL,
    payload   TEXT NOT NULL,
    state     TEXT NOT NULL CHECK (state IN ('pending', 'signed', 'mined', 'dead')),
    deadline  {int},
    tx_nonce  {int},
    raw_tx    {blob},
    tx_hash   TEXT,
    gas_used  {int},
    fills     TEXT,
    reason    TEXT,
    PRIMARY KEY (round_id, batch)
)""",
)
_V1_INDEXES = (
    # The round snapshot reads every open message of a kind; keyed without the market, new
    # messages append to one place in this index instead of landing in one of 100 market groups.
    "CREATE INDEX IF NOT EXISTS messages_open_kind ON messages (status, kind)",
    # A round close lists the markets with open messages of each kind without reading the messages.
    "CREATE INDEX IF NOT EXISTS messages_open_market ON messages (status, kind, market, deadline, intake_round)",
    # Covers live_bid_capacity (checked for every bid), so the sum never reads the table itself.
    "CREATE INDEX IF NOT EXISTS messages_reserved ON messages (signer, kind, status, deadline, total, filled)",
    # One open message per (signer, nonce): the contract lets any number of messages sharing a
    # nonce fill no more than one of them, so a second one could only displace the first. The
    # index also settles two requests (or two matcher processes) racing in with the same nonce.
    "CREATE UNIQUE INDEX IF NOT EXISTS messages_open_nonce ON messages (signer, nonce) WHERE status = 'open'",
)
#: migration n is `_MIGRATIONS[n - 1]`
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _V1_TABLES + _V1_INDEXES,
)
SCHEMA_VERSION = len(_MIGRATIONS)

# Postgres advisory locks in the two-int4 key space (apart from the one-bigint space, which the
# matcher leaves to others such as leader election): the class names what is locked.
_LOCK_CLASS_STORE = 0x75620000  # objects below
_LOCK_SCHEMA = 0  # migrations: processes starting at once migrate one after the other
_LOCK_ROUNDS = 1  # round bookkeeping that reads before it writes (open_round, reset_clearing)
_LOCK_CLASS_ADMISSION = 0x75620001  # one lock per signer (a 32-bit hash of its address)
#: Postgres connections per process, at most: reads (store-only requests, the round worker), and
#: admission (one per intake request in flight, held while it is validated, chain reads
#: included). Apart, so reads never queue behind intake waiting on a slow node; requests beyond a
#: pool's size wait for a connection. The writer has its own one. Two processes at most use
#: 2 × (1 + 12 + 16) = 58 of the server's default 100.
_PG_READERS = 12
_PG_ADMISSIONS = 16


class StoreError(Exception):
    """The store cannot be opened: a bad database URL, an unreachable server, a newer schema."""


class DuplicateMessage(Exception):
    """The message (by digest) is already in the store."""


class _Connection(Protocol):
    """What the store needs of a connection: sqlite3's, or `_PgConnection` around psycopg's."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...


class _Backend(Protocol):
    """What differs between SQLite and Postgres; the SQL and the logic are the store's."""

    #: `sqlite` or `postgres`
    name: str
    #: the statement opening a write transaction
    begin: str
    #: the errors a constraint violation raises
    integrity_errors: tuple[type[BaseException], ...]
    #: the column types and extra columns of the schema (`_MIGRATIONS`' placeholders)
    types: dict[str, str]
    #: the column ordering messages as inserted
    insertion_order: str
    #: `LIMIT` with no bound
    limit_all: str
    #: whether this process may cache sums over its own inserts (no other process writes)
    caches_reservations: bool

    def writer(self) -> AbstractContextManager[_Connection]:
        """The write connection (the caller holds the store's lock)."""

    def reader(self) -> AbstractContextManager[_Connection]:
        """A connection for reads, outside any write transaction."""

    def serialize(self, db: _Connection, what: int) -> None:
        """Makes the rest of the write transaction on `db` exclusive across processes."""

    def admission(self, signers: Sequence[str]) -> AbstractContextManager[None]:
        """Holds the signers' admission locks; reads in between go through one connection."""

    def legacy_tables(self, db: _Connection) -> set[str]:
        """The store's tables, in a store made before versioned migrations (else empty)."""

    def close(self) -> None: ...


class _SqliteBackend:
    """One file in WAL mode: one writer connection (the store's lock serializes writers, as
    SQLite allows one at a time anyway), and one reader connection per thread, which in WAL mode
    never waits for the writer. `synchronous=FULL` makes each commit durable before it returns.
    One process owns the file, so the per-provider reservation cache is safe."""

    name = "sqlite"
    begin = "BEGIN IMMEDIATE"
    integrity_errors: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)
    types = {"int": "INTEGER", "real": "REAL", "blob": "BLOB", "message_seq": ""}
    insertion_order = "rowid"
    limit_all = "-1"
    caches_reservations = True

    def __init__(self, path: str):
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # Inserts land at random places in the digest index; a 64 MiB page cache keeps them in memory.
        self._db.execute("PRAGMA cache_size=-65536")
        self._db.execute("PRAGMA wal_autocheckpoint=10000")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._readers = threading.local()
        #: Every reader connection opened, so `close` closes them all (threads do not).
        self._reader_dbs: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        #: held by an in-memory store's reads, which share the writer connection
        self._memory_lock = threading.RLock()

    @contextmanager
    def writer(self) -> Iterator[_Connection]:
        with self._memory_lock:
            yield self._db

    @contextmanager
    def reader(self) -> Iterator[_Connection]:
        if self.path == ":memory:":
            with self._memory_lock:
                yield self._db
            return
        db = getattr(self._readers, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.row_factory = sqlite3.Row
            # Each batch looks up its digests at random places in the index: keep it in memory.
            db.execute("PRAGMA cache_size=-16384")
            self._readers.db = db
            with self._readers_lock:
                self._reader_dbs.append(db)
        yield db

    def serialize(self, db: _Connection, what: int) -> None:
        """Nothing to do: `BEGIN IMMEDIATE` already excludes every other writer of the file."""

    @contextmanager
    def admission(self, signers: Sequence[str]) -> Iterator[None]:
        """Nothing to do: one process owns the file, and the matcher's own per-provider locks
        serialize its requests."""
        yield

    def legacy_tables(self, db: _Connection) -> set[str]:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" in names:
            return set()
        return names & {"messages", "markets", "rounds", "batches"}

    def close(self) -> None:
        with self._memory_lock:
            self._db.close()
        with self._readers_lock:
            for db in self._reader_dbs:
                db.close()
            self._reader_dbs.clear()


class _PgRow(tuple):
    """A row read by column name or index, like sqlite3.Row (the store's code reads both ways)."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> _PgRow:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self._index[key] if isinstance(key, str) else key)

    def keys(self) -> list[str]:
        return list(self._index)


def _pg_rows(cursor: Any) -> Any:
    """psycopg row factory making `_PgRow`s."""
    index = {column.name: i for i, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> _PgRow:
        return _PgRow(values, index)

    return make


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """The store's SQL (qmark placeholders, as sqlite3 takes them) in psycopg's format style."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PgConnection:
    """A psycopg connection taking the store's SQL as it is written for SQLite."""

    def __init__(self, conn: Any):
        self.conn = conn

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.conn.execute(_pg_sql(sql), parameters)

    def executemany(self, sql: str, parameters: Any, /) -> Any:
        cursor = self.conn.cursor()
        cursor.executemany(_pg_sql(sql), list(parameters))
        return cursor


def _advisory_key(signer: str) -> int:
    """A signer's admission lock key: a signed 32-bit hash (a collision only serializes two signers)."""
    return int.from_bytes(hashlib.blake2b(signer.lower().encode(), digest_size=4).digest(), "big", signed=True)


class _PostgresBackend:
    """A Postgres database shared by any number of matcher processes, through psycopg 3.

    Writes go through one connection per process (the store's lock serializes this process's
    writers and groups their commits, as with SQLite); reads through a pool, in autocommit, so
    each statement sees every commit before it. `synchronous_commit=on` makes each commit durable
    (flushed to the server's WAL) before it returns. What one process must not decide alone is
    decided under advisory locks: admission per signer, migrations, round bookkeeping. No
    reservation is cached, since other processes insert bids too.
    """

    name = "postgres"
    begin = "BEGIN"
    types = {"int": "BIGINT", "real": "DOUBLE PRECISION", "blob": "BYTEA",
             "message_seq": ",\n    seq BIGINT GENERATED ALWAYS AS IDENTITY"}
    insertion_order = "seq"
    limit_all = "ALL"
    caches_reservations = False

    def __init__(self, url: str):
        import psycopg
        from psycopg_pool import ConnectionPool

        self.integrity_errors: tuple[type[BaseException], ...] = (psycopg.IntegrityError,)
        self._admitting = threading.local()

        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.row_factory = _pg_rows
            conn.execute("SET synchronous_commit = on")
            conn.execute("SET application_name = 'underbid-matcher'")

        def pool(size: int, name: str, *, checked: bool) -> ConnectionPool[Any]:
            # A checked pool tries each connection (one round trip) before handing it out, so a
            # server restart costs no failed commit. Reads and admissions, one checkout each per
            # request, skip it: a connection that broke fails that one request and is discarded.
            return ConnectionPool(
                url, min_size=1, max_size=size, kwargs={"autocommit": True}, configure=configure,
                check=ConnectionPool.check_connection if checked else None, name=name, open=False, timeout=30,
            )

        try:  # one connection first, for the server's own words on why it cannot be reached
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())
            raise StoreError(f"cannot connect to the Postgres store at {_redacted(url)}: {reason}") from None
        self._writer = pool(1, "underbid-writer", checked=True)
        self._readers = pool(_PG_READERS, "underbid-readers", checked=False)
        self._admissions = pool(_PG_ADMISSIONS, "underbid-admissions", checked=False)
        try:
            for opening in (self._writer, self._readers, self._admissions):
                opening.open(wait=True, timeout=10)
        except Exception as exc:  # PoolTimeout: the server refused or did not answer
            self.close()
            raise StoreError(f"cannot connect to the Postgres store at {_redacted(url)}: {exc}") from None

    @contextmanager
    def writer(self) -> Iterator[_Connection]:
        with self._writer.connection() as conn:
            yield _PgConnection(conn)

    @contextmanager
    def reader(self) -> Iterator[_Connection]:
        held = getattr(self._admitting, "db", None)
        if held is not None:  # inside `admission`: read under its locks, on its connection
            yield held
            return
        with self._readers.connection() as conn:
            yield _PgConnection(conn)

    def serialize(self, db: _Connection, what: int) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?, ?)", (_LOCK_CLASS_STORE, what))

    @contextmanager
    def admission(self, signers: Sequence[str]) -> Iterator[None]:
        """Takes each signer's transaction-scoped advisory lock (in sorted order, so two requests
        cannot deadlock) on a connection of its own, and reads through it until the caller is
        done: any process admitting for these signers waits, then reads what this one committed."""
        with self._admissions.connection() as conn:
            db = _PgConnection(conn)
            db.execute("BEGIN")
            try:
                for key in sorted({_advisory_key(signer) for signer in signers}):
                    db.execute("SELECT pg_advisory_xact_lock(?, ?)", (_LOCK_CLASS_ADMISSION, key))
                self._admitting.db = db
                yield
            finally:
                self._admitting.db = None
                if not conn.closed:
                    conn.rollback()  # ends the transaction: releases the locks (it wrote nothing)

    def legacy_tables(self, db: _Connection) -> set[str]:
        """None: Postgres stores were versioned from the first."""
        return set()

    def close(self) -> None:
        self._writer.close()
        self._readers.close()
        self._admissions.close()


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


#: URL schemes of a Postgres store (libpq's two spellings)
POSTGRES_SCHEMES = ("postgresql", "postgres")


def database_kind(location: str | Path) -> str:
    """`postgres` for a `postgresql://` (or `postgres://`) URL, `sqlite` for a file path or
    `:memory:`; a StoreError for any other URL."""
    text = str(location)
    scheme, sep, _ = text.partition("://")
    if not sep:
        return "sqlite"
    if scheme.lower() in POSTGRES_SCHEMES:
        return "postgres"
    raise StoreError(
        f"unsupported database URL {_redacted(text)!r}: give a file path (SQLite) or a postgresql:// URL"
    )


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
    """The matcher's store, shared by the API threads and the round worker: a SQLite file (the
    default) or a Postgres database (`postgresql://…`), chosen by `location`.

    The SQL, the schema and the logic are shared; what differs (connections, durability settings,
    locking across processes) is the back end's (`_SqliteBackend`, `_PostgresBackend`). Writes are
    serialized within a process by one lock, and every statement here is short.
    """

    def __init__(self, location: str | Path):
        self.location = str(location)
        self._backend: _Backend = (
            _PostgresBackend(self.location) if database_kind(self.location) == "postgres"
            else _SqliteBackend(self.location)
        )
        self._lock = threading.RLock()
        self._pending_lock = threading.Lock()
        self._pending: list[_PendingWrite] = []
        #: provider -> (chain time, units its open bids reserved at that time): spares a SQL sum
        #: over the provider's open bids for every new bid (SQLite only: with Postgres another
        #: process may have added bids). The store's own inserts add to it; fills and drops
        #: clear it (and bump the generation, so a sum read meanwhile is not kept).
        self._reserved: dict[str, tuple[int, int]] = {}
        self._reserved_lock = threading.Lock()
        self._reserved_generation = 0
        try:
            self._migrate()
        except BaseException:
            self._backend.close()
            raise

    @property
    def backend(self) -> str:
        """`sqlite` or `postgres`."""
        return self._backend.name

    def schema_version(self) -> int:
        """The last migration this store has run."""
        with self._reading() as db:
            return int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])

    def _migrate(self) -> None:
        """Runs the migrations this store has not run yet, in one transaction (several processes
        opening one Postgres store at once migrate it once). A SQLite store made before versioned
        migrations is first brought to the layout of migration 1 by `_upgrade_unversioned`."""
        with self._tx() as db:
            self._backend.serialize(db, _LOCK_SCHEMA)
            legacy = self._backend.legacy_tables(db)
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at "
                f"{self._backend.types['real']} NOT NULL)"
            )
            current = int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"the store's schema is version {current}, newer than this matcher's ({SCHEMA_VERSION}):"
                    " upgrade the matcher"
                )
            if legacy:
                self._upgrade_unversioned(db, legacy)
                db.execute("INSERT INTO schema_version (version, applied_at) VALUES (1, ?)", (time.time(),))
                current = 1
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version - 1]:
                    db.execute(statement.format(**self._backend.types))
                db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, time.time()))

    def _upgrade_unversioned(self, db: _Connection, tables: set[str]) -> None:
        """Brings a SQLite store of an earlier, unversioned layout to migration 1's: batches kept
        only their hash (`_upgrade_batches`); messages gained their nonce (as decimal text: a
        uint256 does not fit SQLite's integers), unique among open messages, their intake round
        and their last "why no match"; two indexes were replaced."""
        db.execute("DROP INDEX IF EXISTS messages_open")
        db.execute("DROP INDEX IF EXISTS messages_signer")
        if "batches" in tables:
            self._upgrade_batches(db)
        for statement in _V1_TABLES:
            db.execute(statement.format(**self._backend.types))
        columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
        if "nonce" not in columns:
            db.execute("ALTER TABLE messages ADD COLUMN nonce TEXT")
        if "intake_round" not in columns:  # older rows keep NULL: they belong to every round
            db.execute("ALTER TABLE messages ADD COLUMN intake_round INTEGER")
        # Why no match: older rows keep NULL (not told yet); the next round that passes over them tells.
        for column, kind in _UNMATCHED_COLUMNS:
            if column not in columns:
                db.execute(f"ALTER TABLE messages ADD COLUMN {column} {kind}")
        rows = db.execute("SELECT digest, body FROM messages WHERE nonce IS NULL").fetchall()
        if rows:
            db.executemany(
                "UPDATE messages SET nonce = ? WHERE digest = ?",
                [(str(json.loads(body)["nonce"]), digest) for digest, body in rows],
            )
        for statement in _V1_INDEXES:
            db.execute(statement)

    def _upgrade_batches(self, db: _Connection) -> None:
        """Rebuilds a batches table of the earlier layout (hash only; pending/sent/confirmed).

        A sent batch, or a landed one of a round not yet confirmed (whose fills the earlier
        version applied only at confirmation), becomes `signed` with no raw transaction: the
        reconciler then asks the chain for its receipt and applies the fills of what landed.
        """
        columns = {row[1] for row in db.execute("PRAGMA table_info(batches)")}
        if "raw_tx" in columns:
            return
        db.execute("ALTER TABLE batches RENAME TO batches_v1")
        db.execute(_V1_TABLES[3].format(**self._backend.types))  # batches
        db.execute(
            "INSERT INTO batches (round_id, batch, payload, state, tx_hash, gas_used)"
            " SELECT b.round_id, b.batch, b.payload,"
            " CASE WHEN b.state = 'confirmed' AND r.state = 'confirmed' THEN 'mined'"
            "      WHEN b.tx_hash IS NOT NULL THEN 'signed' ELSE 'pending' END,"
            " b.tx_hash, b.gas_used FROM batches_v1 b JOIN rounds r ON r.id = b.round_id"
        )
        db.execute("DROP TABLE batches_v1")

    def close(self) -> None:
        """Closes every connection."""
        with self._lock:
            self._backend.close()

    @contextmanager
    def _reading(self) -> Iterator[_Connection]:
        """A connection for reads, which never wait for the writer (SQLite: one per thread in
        WAL mode; Postgres: one from the pool, or the admission's)."""
        with self._backend.reader() as db:
            yield db

    @contextmanager
    def _tx(self) -> Iterator[_Connection]:
        with self._lock, self._backend.writer() as db:
            db.execute(self._backend.begin)
            try:
                yield db
            except BaseException:
                _rollback(db)
                raise
            db.execute("COMMIT")

    def admission(self, signers: Iterable[str]) -> AbstractContextManager[None]:
        """Admits messages of `signers` exclusively: with Postgres, every matcher process sharing
        the database waits while another checks these signers' reservations (stake, escrow)
        and commits their messages; the store's reads meanwhile see every commit made before.
        With SQLite (one process) it does nothing; the matcher's own locks serialize requests.

        Hold it from before the reservations are read until `add_messages` has returned.
        """
        return self._backend.admission(sorted(set(signers)))

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
        """Writes every queued request in one transaction, one savepoint each (the caller holds
        the store's lock)."""
        with self._backend.writer() as db:
            db.execute(self._backend.begin)
            try:
                for i, request in enumerate(batch):
                    db.execute(f"SAVEPOINT w{i}")
                    try:
                        db.executemany(
                            "INSERT INTO messages (digest, kind, signer, market, total, deadline, body, signature,"
                            " receipt, received_at, nonce, intake_round) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            request.rows,
                        )
                    except self._backend.integrity_errors as exc:
                        db.execute(f"ROLLBACK TO SAVEPOINT w{i}")
                        request.error = DuplicateMessage(str(exc))
                    db.execute(f"RELEASE SAVEPOINT w{i}")
                db.execute("COMMIT")
                for request in batch:
                    if request.error is None:
                        self._reserve(request.rows)
            except BaseException as exc:
                _rollback(db)
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
        query += f" ORDER BY received_at, {self._backend.insertion_order}"
        query += f" LIMIT {self._backend.limit_all} OFFSET ?" if limit < 0 else " LIMIT ? OFFSET ?"
        with self._reading() as db:
            rows = db.execute(query, [*args, offset] if limit < 0 else [*args, limit, offset]).fetchall()
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
        caching = self._backend.caches_reservations
        with self._reserved_lock:
            cached = self._reserved.get(provider)
            if caching and cached is not None and cached[0] == now:
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
            if caching and generation == self._reserved_generation:
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
            db.executemany("INSERT INTO markets (market, spec) VALUES (?, ?) ON CONFLICT DO NOTHING", specs.items())

    def market_summary(self, now: int) -> list[dict[str, Any]]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT m.market, k.spec,"
                " SUM(CASE WHEN m.kind = 'order' AND m.status = 'open' AND m.deadline >= ? THEN 1 ELSE 0 END)"
                " AS open_orders,"
                " SUM(CASE WHEN m.kind = 'bid' AND m.status = 'open' AND m.deadline >= ? THEN 1 ELSE 0 END)"
                " AS open_bids"
                " FROM messages m LEFT JOIN markets k ON k.market = m.market"
                " GROUP BY m.market, k.spec ORDER BY m.market",
                (now, now),
            ).fetchall()
        # Postgres sums integers as numeric (Decimal): the counts are made ints for both back ends.
        return [{"market": r["market"], "spec": r["spec"], "open_orders": int(r["open_orders"]),
                 "open_bids": int(r["open_bids"])} for r in rows]

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
            self._backend.serialize(db, _LOCK_ROUNDS)  # two processes would both insert the next id
            row = db.execute(
                "SELECT id FROM rounds WHERE state = 'open' AND closed_at IS NULL ORDER BY id LIMIT 1"
            ).fetchone()
            if row is not None:
                return int(row["id"])
            next_id = max(min_id, int(db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM rounds").fetchone()[0]))
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

    def fills_applied(self) -> int:
        """How many batches' fills the store has applied (`record_mined`). It only grows: nothing
        moves a mined batch back or deletes it. Another process compares it to know when chain
        reads it cached may predate fills applied since."""
        with self._reading() as db:
            return int(db.execute("SELECT COUNT(*) FROM batches WHERE state = 'mined'").fetchone()[0])

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
            self._backend.serialize(db, _LOCK_ROUNDS)  # no batch may be signed between the count and the reset
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


def _rollback(db: _Connection) -> None:
    """Rolls back the transaction on `db`; a connection that broke mid-transaction (a Postgres
    server gone) has none left to roll back, and its error is the one worth raising."""
    try:
        db.execute("ROLLBACK")
    except Exception:  # noqa: BLE001 - the caller re-raises the error that ended the transaction
        if not getattr(getattr(db, "conn", None), "closed", False):
            raise


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


def _batch(row: Any) -> StoredBatch:
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


def _message(row: Any) -> StoredMessage:
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


def _unmatched(row: Any) -> Unmatched | None:
    if row["unmatched_round"] is None:
        return None
    try:
        reason = NoMatch(row["unmatched_reason"])
    except ValueError:  # written by a newer version with a reason this one does not know
        return None
    return Unmatched(round=row["unmatched_round"], reason=reason, detail=row["unmatched_detail"] or "",
                     matched=row["unmatched_matched"] or 0, wanted=row["unmatched_wanted"] or 0)
