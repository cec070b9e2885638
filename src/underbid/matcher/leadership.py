"""Which matcher process leads: closes rounds and submits settlements.

One matcher identity (one address, one signing key, one bond) may run as several processes on one
Postgres store. Every process serves the API and takes messages; exactly one, the leader, runs the
round timer, closes rounds and signs and broadcasts settlements. As in CoW Protocol's autopilot,
the leader is whoever holds a Postgres session advisory lock (`pg_try_advisory_lock`) on a
dedicated connection:

- the lock lives exactly as long as that connection's server session, so a leader that dies, or
  whose connection drops, releases it and a follower polling every `period` seconds takes it;
- the lock session sets `idle_session_timeout` and TCP keepalives, so a leader that is paused
  (SIGSTOP, a long GC, a frozen VM) or cut off from the database loses its session on the server
  side within `lease` seconds even though nothing closed the socket: the lock is a lease;
- a leader that resumes after that is a zombie: it checks the lock session with a round trip
  (`ensure_leader`) immediately before it signs and before it broadcasts, finds it gone and stops
  (`NotLeader`). What a zombie could still do between that check and the broadcast is bounded by
  the chain and the store: see docs/PROTOCOL.md, "Failover".

Intake spans processes too. A bid's receipt names the round its message is committed in, and the
round's snapshot must hold every receipted bid, so intake (shared) and the leader's close of
intake and application of fills (exclusive) exclude each other across processes through a second
advisory lock, taken shared or exclusive on a pooled connection. (A signer's messages are
validated and committed under the store's per-signer admission lock, so two processes cannot
together reserve more stake or escrow than the signer has.)

With a SQLite store (the default: one process) `SoleLeader` is used: always the leader, and the
in-process locks are the whole story.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

log = logging.getLogger("underbid.matcher.leadership")

#: How often a follower tries the lock and a leader checks its lock session, in seconds.
PERIOD = 1.0
#: How long the server keeps an unresponsive lock session (and so the lock): a paused or cut-off
#: leader is replaced after about this long plus a follower's `PERIOD`.
LEASE = 4.0


class NotLeader(RuntimeError):
    """This process does not hold the matcher's leader lock (now), so it must not close or submit."""


class IntakeLockUnavailable(RuntimeError):
    """The cross-process intake lock could not be taken (the database is unreachable, or the lock
    was not granted within the lease): the request is refused and may be retried."""


def _lock_key(purpose: str, identity: str) -> int:
    """A signed 64-bit advisory-lock key for `purpose` of this matcher identity (its address)."""
    digest = hashlib.sha256(f"underbid:{purpose}:{identity.lower()}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class SoleLeader:
    """One process over its own (SQLite) store: always the leader; intake locks are in-process."""

    shared_store = False

    @property
    def is_leader(self) -> bool:
        return True

    def ensure_leader(self) -> None:
        """Never raises: a sole process always leads."""

    def describe(self) -> dict[str, Any]:
        return {"mode": "sole", "leader": True}

    def start(self, on_elected: Callable[[], None], on_lost: Callable[[], None]) -> None:
        on_elected()

    def stop(self) -> None:
        pass

    @contextmanager
    def intake_shared(self) -> Iterator[None]:
        yield

    @contextmanager
    def intake_exclusive(self) -> Iterator[None]:
        yield


class PostgresLeadership(SoleLeader):
    """Leader election and cross-process intake locks over Postgres advisory locks (see the module doc)."""

    shared_store = True

    def __init__(self, url: str, identity: str, *, period: float = PERIOD, lease: float = LEASE):
        import psycopg  # the Postgres driver is needed only when the store is Postgres

        self._psycopg = psycopg
        self.url = url
        self.period = period
        self.lease = lease
        self.leader_key = _lock_key("leader", identity)
        self.intake_key = _lock_key("intake", identity)
        self.identity = identity
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._conn: Any = None  # the lock session; used only under _conn_lock
        self._conn_lock = threading.Lock()
        self._leader = threading.Event()
        self._first_try = threading.Event()  # set once the first try for the lock has ended
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: queue.LifoQueue[tuple[Any, float]] = queue.LifoQueue()
        self._pool_all: list[Any] = []
        self._pool_guard = threading.Lock()
        #: Intake-lock connections holding the lock now: the keeper pings them (see `_locked`).
        self._held: dict[int, Any] = {}
        self._held_guard = threading.Lock()
        self._keeper: threading.Thread | None = None
        self.since: float | None = None

    # ----- the lock session -----

    def _connect(self, application: str) -> Any:
        """A connection whose server session dies within `lease` seconds of silence or a pause."""
        lease_ms = int(self.lease * 1000)
        conn = self._psycopg.connect(
            self.url, autocommit=True, connect_timeout=max(1, int(self.lease)),
            application_name=f"underbid-matcher {application} {self.name}",
            keepalives=1, keepalives_idle=1, keepalives_interval=1, keepalives_count=2,
            tcp_user_timeout=lease_ms,
        )
        # Server side: the session (and every advisory lock it holds) ends after `lease` seconds
        # idle, which is what makes the leader lock a lease; a leader pings every `period`.
        conn.execute(f"SET idle_session_timeout = {lease_ms}")
        conn.execute(f"SET statement_timeout = {lease_ms}")
        conn.execute("SET tcp_keepalives_idle = 1")
        conn.execute("SET tcp_keepalives_interval = 1")
        conn.execute("SET tcp_keepalives_count = 2")
        return conn

    def _drop_conn(self) -> None:
        if self._conn is not None:
            with suppress(Exception):  # closing a broken connection may fail; it is gone either way
                self._conn.close()
            self._conn = None

    def _holds_lock(self) -> bool:
        """One round trip on the lock session: True while it holds the leader lock. Raises on a
        dead session."""
        row = self._conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()"
            " AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = %s::bigint",
            (self.leader_key,),
        ).fetchone()
        return bool(row and row[0])

    def _try_acquire(self) -> bool:
        if self._conn is None:
            self._conn = self._connect("leader-lock")
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.leader_key,)).fetchone()
        return bool(row and row[0])

    @property
    def is_leader(self) -> bool:
        return self._leader.is_set()

    def ensure_leader(self) -> None:
        """Checks, with a round trip on the lock session, that this process still holds the lock;
        raises NotLeader (and stops leading) when it does not. Called right before signing and
        before broadcasting, so a zombie leader does neither."""
        if not self._leader.is_set():
            raise NotLeader("this matcher process is a follower: another process holds the leader lock")
        with self._conn_lock:
            try:
                held = self._conn is not None and self._holds_lock()
            except self._psycopg.Error as error:
                held = False
                log.error("leader lock session failed (%s): no longer the leader", error)
                self._drop_conn()
        if not held:
            self._lose("the leader lock session is gone")
            raise NotLeader("this matcher process lost the leader lock: another process may be leading now")

    def describe(self) -> dict[str, Any]:
        leader = self._leader_session()
        return {
            "mode": "postgres", "leader": self.is_leader, "process": self.name,
            "leader_process": leader, "since": self.since,
        }

    def _leader_session(self) -> str | None:
        """The application name of the session holding the leader lock, if any (for people)."""
        try:
            with self.pooled() as conn:
                row = conn.execute(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock' AND l.objsubid = 1"
                    " AND ((l.classid::bigint << 32) | l.objid::bigint) = %s::bigint",
                    (self.leader_key,),
                ).fetchone()
            return row[0].removeprefix("underbid-matcher leader-lock ") if row else None
        except self._psycopg.Error:
            return None

    # ----- the election loop -----

    def start(self, on_elected: Callable[[], None], on_lost: Callable[[], None]) -> None:
        """Starts contending: `on_elected` runs (in the election thread) each time this process
        becomes leader, `on_lost` each time it stops being it."""
        self._on_elected, self._on_lost = on_elected, on_lost
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def _lose(self, why: str) -> None:
        if self._leader.is_set():
            self._leader.clear()
            self.since = None
            log.error("no longer the leader: %s", why)
            self._on_lost()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._conn_lock:
                try:
                    if self._leader.is_set():
                        held = self._holds_lock()
                        won = False
                    else:
                        held = won = self._try_acquire()
                except self._psycopg.Error as error:
                    if self._leader.is_set():
                        log.error("leader lock session failed: %s", error)
                    held = won = False
                    self._drop_conn()
            if won:
                self._leader.set()
                self.since = time.time()
                log.warning("this process (%s) is now the leader", self.name)
                try:
                    self._on_elected()
                except Exception:  # noqa: BLE001 - a failed take-over gives the lock up for another try
                    log.exception("taking over as leader failed: giving the lock up")
                    with self._conn_lock:
                        self._drop_conn()
                    self._lose("taking over failed")
            elif not held:
                self._lose("the leader lock session is gone")
            self._first_try.set()
            self._stop.wait(self.period)

    def wait_first_try(self, timeout: float) -> bool:
        """Waits for the first try for the lock to end; True if it made this process the leader."""
        self._first_try.wait(timeout)
        return self.is_leader

    def stop(self) -> None:
        """Stops contending and gives the lock up (closing the lock session)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._conn_lock:
            self._drop_conn()
        self._leader.clear()
        with self._pool_guard:
            for conn in self._pool_all:
                with suppress(Exception):  # shutting down
                    conn.close()
            self._pool_all.clear()

    # ----- cross-process intake locks -----

    @contextmanager
    def pooled(self) -> Iterator[Any]:
        """A connection of the intake-lock pool (opened on demand; a broken one is discarded)."""
        conn = None
        while conn is None:
            try:
                conn, last_used = self._pool.get_nowait()
            except queue.Empty:
                conn, last_used = self._connect("intake-lock"), time.monotonic()
                with self._pool_guard:
                    self._pool_all.append(conn)
            if time.monotonic() - last_used > self.lease / 2 or conn.closed:
                # The server ends a session idle for `lease` seconds (so a paused process's locks
                # are freed): one idle near that long is not worth a failed request.
                self._discard(conn)
                conn = None
        broken = False
        try:
            yield conn
        except (self._psycopg.Error, IntakeLockUnavailable):
            broken = True
            self._discard(conn)
            raise
        finally:
            if not broken:  # a refused request (any other exception) leaves the connection fine
                self._pool.put((conn, time.monotonic()))

    def _discard(self, conn: Any) -> None:
        with self._pool_guard:
            if conn in self._pool_all:
                self._pool_all.remove(conn)
        with suppress(Exception):  # a broken connection is gone either way
            conn.close()

    @contextmanager
    def intake_shared(self) -> Iterator[None]:
        """Holds the intake lock shared (any number of processes' requests at once) until the
        block's commit is done. (Per-signer exclusion across processes is the store's
        `admission`.)"""
        with self._locked("SELECT pg_advisory_lock_shared(%s)", "SELECT pg_advisory_unlock_shared(%s)"):
            yield

    @contextmanager
    def intake_exclusive(self) -> Iterator[None]:
        """Holds the intake lock exclusively: no process commits a message meanwhile."""
        with self._locked("SELECT pg_advisory_lock(%s)", "SELECT pg_advisory_unlock(%s)"):
            yield

    @contextmanager
    def _locked(self, lock: str, unlock: str) -> Iterator[None]:
        """Holds the intake lock (`lock`/`unlock`: its shared or exclusive SQL) on a pooled
        connection; a database failure taking it is IntakeLockUnavailable (a statement waits at
        most the lease: the session's statement_timeout)."""
        with self.pooled() as conn:
            self._lock_statement(conn, lock)
            # The session ends after `lease` seconds idle (so a paused process's locks are freed), and
            # with it this lock: a request still validating (chain reads) after that would read its
            # round and commit after the leader closed that round's intake. So while the lock is
            # held, the keeper pings the session: only a paused (or cut-off) process loses it.
            self._hold(conn)
            try:
                yield
            finally:
                self._release(conn)
                self._lock_statement(conn, unlock)

    def _hold(self, conn: Any) -> None:
        with self._held_guard:
            self._held[id(conn)] = conn
            if self._keeper is None or not self._keeper.is_alive():
                self._keeper = threading.Thread(target=self._keep_held, name="intake-lock-keeper", daemon=True)
                self._keeper.start()

    def _release(self, conn: Any) -> None:
        with self._held_guard:
            self._held.pop(id(conn), None)

    def _keep_held(self) -> None:
        """Pings every held intake-lock session a few times per lease (psycopg serializes a ping
        with the holder's own statements on the connection)."""
        while not self._stop.wait(self.lease / 4):
            with self._held_guard:
                held = list(self._held.values())
            for conn in held:
                with suppress(Exception):  # a broken session fails its holder's unlock, which says so
                    conn.execute("SELECT 1")

    def _lock_statement(self, conn: Any, statement: str) -> None:
        try:
            conn.execute(statement, (self.intake_key,))
        except self._psycopg.Error as error:
            raise IntakeLockUnavailable(
                f"the matcher's intake lock on the Postgres store is unavailable ({type(error).__name__}: {error})"
            ) from error
