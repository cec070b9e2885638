"""A real matcher process (real HTTP, a real SQLite file or PostgreSQL server) against the test
anvil and contracts.

`matcher_process` stores in SQLite; a test marked `on_both_stores` runs on both back ends."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from underbid.devnet.deploy import address_book

ADMIN_TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MatcherProcess:
    """`underbid matcher run` in a subprocess; can be killed with SIGKILL and started again."""

    def __init__(self, rpc: str | None, book: Path | None, db: str | Path, log: Path, *, round_seconds: float = 0,
                 network: str | None = None, signer: tuple[str, ...] = ("--dev",), env: dict[str, str] | None = None):
        self.rpc, self.book, self.db, self.log = rpc, book, db, log
        #: `--network NAME` instead of --rpc and --deployment; the options naming the matcher's key; extra env
        self.network, self.signer, self.extra_env = network, signer, env or {}
        #: The round timer's period; 0: rounds close only through the API.
        self.round_seconds = round_seconds
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, failpoint: str | None = None, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("UNDERBID_FAILPOINT", "UNDERBID_MATCHER_KEY")}
        env.update(self.extra_env)
        if failpoint:
            env["UNDERBID_FAILPOINT"] = failpoint
        target = (["--network", self.network] if self.network
                  else ["--rpc", str(self.rpc), "--deployment", str(self.book)])
        cmd = [
            sys.executable, "-m", "underbid.cli", "matcher", "run", *self.signer, *target, "--db", str(self.db),
            "--port", str(self.port), "--round-seconds", str(self.round_seconds), "--admin-token", ADMIN_TOKEN,
        ]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"matcher exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"matcher did not answer within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def wait_dead(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120)

    def close_round(self, timeout: float = 300.0) -> httpx.Response:
        """Asks for a round close (the API answers 202 at once) and polls `GET /rounds/{id}` until
        the close ends; returns a 200 response whose body is the close's report (`state`
        "confirmed", "failed", or "open" when there was nothing to match). A failed close is
        reported as `{"round_id", "state": "failed", "error"}`. Raises httpx.HTTPError if the
        process dies meanwhile."""
        asked = httpx.post(self.url + "/rounds/close", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)
        if asked.status_code != 202:
            return asked
        round_id = asked.json()["round_id"]
        deadline = time.monotonic() + timeout
        while True:
            polled = httpx.get(self.url + asked.json()["poll"], timeout=60)
            polled.raise_for_status()
            close = polled.json()["close"]
            if close["status"] == "done":
                return httpx.Response(200, json=close["report"], request=polled.request)
            if close["status"] != "running":
                report = {"round_id": round_id, "state": "failed", "error": close["error"], "close": close["status"]}
                return httpx.Response(200, json=report, request=polled.request)
            if time.monotonic() > deadline:
                raise TimeoutError(f"round {round_id} did not finish closing within {timeout}s: {polled.text}")
            time.sleep(0.1)


#: The store back ends every store test, and the matcher tests that exercise the store, run on.
STORE_BACKENDS = ("sqlite", "postgres")


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request, tmp_path) -> str:
    """Where a fresh store lives, once per back end: a SQLite file's path, or the URL of a fresh
    database in this worker's throwaway PostgreSQL cluster."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return str(tmp_path / "matcher.db")


@pytest.fixture
def book_path(tmp_path, protocol, deployer, params) -> Path:
    return address_book(protocol, "local", deployer, params).save(tmp_path / "local.json")


@pytest.fixture
def matcher_db(request, tmp_path) -> str:
    """The store `matcher_process` runs on: a SQLite file, or, parametrized by `on_both_stores`,
    each back end in turn."""
    if getattr(request, "param", "sqlite") == "postgres":
        return request.getfixturevalue("postgres_url")
    return str(tmp_path / "matcher.db")


#: Runs a test using `matcher_process` once per store back end (`[sqlite]`, `[postgres]`): the
#: tests whose requests and rounds reach the store; the others stay on SQLite alone.
on_both_stores = pytest.mark.parametrize("matcher_db", STORE_BACKENDS, indirect=True)


@pytest.fixture
def matcher_process(tmp_path, book_path, chain, matcher_db):
    process = MatcherProcess(chain.provider.uri, book_path, matcher_db, tmp_path / "matcher.log")
    process.start()
    yield process
    process.stop()


def store_rows(db: str | Path, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """Rows of one query on a store's database, read past the matcher (SQLite file or Postgres
    URL); `sql` takes `?` placeholders on both."""
    if str(db).startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(str(db), autocommit=True) as conn:
            return [tuple(row) for row in conn.execute(sql.replace("?", "%s"), params).fetchall()]
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def order_body(order, signature: bytes, **extra) -> dict:
    return {**order.model_dump(by_alias=True), "signature": "0x" + signature.hex(), **extra}


def post_pair(market, http, buyer, provider, order_http=None) -> tuple[str, str]:
    """Posts one bid (to `http`) and one order (to `order_http`, default the same) that match each
    other in full (2 units at 1 UBC against at most 2); returns their digests (order, bid)."""
    from ..conftest import HOUR, UBC

    bid = market.bid(provider, capacity=2, price=UBC)
    order = market.order(buyer, units=2, duration=HOUR, max_price=2 * UBC)
    assert http.post("/bids", json=order_body(*bid)).status_code == 201
    assert (order_http or http).post("/orders", json=order_body(*order)).status_code == 201
    return "0x" + order[0].digest(market.domain).hex(), "0x" + bid[0].digest(market.domain).hex()


@pytest.fixture
def crash_pair(accounts, market):
    """A buyer (100 UBC of escrow) and a provider (8 units of stake) of their own, for the crash and
    failover tests: (buyer, provider)."""
    from ..conftest import UBC

    buyer, provider = accounts[10], accounts[20]
    market.fund_buyer(buyer, 100 * UBC)
    market.stake_provider(provider, 8)
    return buyer, provider


def wait_until(what: str, condition, timeout: float) -> float:
    """Polls `condition()` until it holds and returns the seconds that took; fails naming `what`
    after `timeout` seconds."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"not within {timeout}s: {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def assert_killed_at(failpoint: str, db: str | Path, chain, settlement, matcher) -> None:
    """Checks, from the store and the node, that a matcher killed at `failpoint` during round 1
    stopped exactly there: after clearing nothing was signed; after signing the transaction is
    stored but the node never saw it; after broadcasting the node has it (mined, or still pending:
    a loaded node may not have mined it yet)."""
    from web3.exceptions import TransactionNotFound

    rows = store_rows(db, "SELECT tx_hash FROM batches WHERE round_id = 1 AND tx_hash IS NOT NULL")
    signed = [row[0] for row in rows]
    if failpoint == "after_clearing":
        assert signed == [] and settlement.rounds(matcher, 1).batches == 0
        return
    assert len(signed) == 1
    if failpoint == "after_signing":
        with pytest.raises(TransactionNotFound):
            chain.provider.web3.eth.get_transaction(signed[0])
        assert settlement.rounds(matcher, 1).batches == 0
    else:
        assert chain.provider.web3.eth.get_transaction(signed[0])["hash"].hex().removeprefix("0x") == signed[0][2:]


def leases_of_round(settlement, chain, round_id: int) -> list:
    """The LeaseOpened events of a round, from the chain's logs."""
    return [log for log in settlement.LeaseOpened.range(0, chain.blocks.height + 1) if log.round == round_id]
