"""Runs the matcher as a process: wait for the node, reconcile, then serve the API and close
rounds on a timer.

Over a Postgres store (`--db postgresql://…`) several processes may run for one matcher: each
serves the API and takes messages, and only the leader (underbid.matcher.leadership) reconciles,
runs the round timer and closes rounds; a process that becomes leader reconciles first, exactly
as a restart does, so a round the previous leader left in flight is finished.

The node is reached with a short per-request timeout and no retries of web3's own
(`underbid.chain.view.connect`); background work retries through `underbid.chain.retry` under an
overall deadline, and request handlers never retry, so a stalled or dead node makes intake answer
503 within seconds while store-only reads keep answering.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import anyio.to_thread
import uvicorn
from eth_account.signers.local import LocalAccount

from underbid.chain.deployment import AddressBook
from underbid.chain.retry import wait_for
from underbid.chain.view import RPC_TIMEOUT, ChainView, connect
from underbid.matcher import netsimplex
from underbid.matcher.api import create_app
from underbid.matcher.leadership import NotLeader, PostgresLeadership, SoleLeader
from underbid.matcher.rounds import Matcher, RoundTimer
from underbid.matcher.store import Store

log = logging.getLogger("underbid.matcher.service")

#: Worker threads for the API's (synchronous) endpoints; anyio's default is 40. An intake request
#: waiting on a stalled node holds one for at most the RPC timeout, so with more threads than
#: requests in flight store-only reads never queue behind it.
WORKER_THREADS = 128


def build_matcher(
    rpc_url: str, deployment: Path, db: str | Path, account: LocalAccount, rpc_timeout: float = RPC_TIMEOUT,
    *, devnet_only: str | None = None,
) -> Matcher:
    """The matcher over the node at `rpc_url`, with its store at `db` (a SQLite file's path or a
    postgresql:// URL). While that node is down or not answering, waits for it (logging each
    failed attempt, with backoff) instead of failing; a node on the wrong chain is a ValueError,
    a store that cannot be opened a StoreError. `devnet_only` names what was asked for that only
    a local devnet allows (`--dev`): on any other chain it is a DevnetError."""
    book = AddressBook.load(deployment)

    def attach() -> ChainView:
        w3 = connect(rpc_url, timeout=rpc_timeout)
        if w3.eth.chain_id != book.chain_id:
            raise ValueError(
                f"the node at {rpc_url} is chain {w3.eth.chain_id}, the address book is for {book.chain_id}"
            )
        if devnet_only:
            from underbid.devnet.node import DevnetError, devnet_refusal

            reason = devnet_refusal(w3, book)
            if reason is not None:
                raise DevnetError(f"{devnet_only} works only on a local devnet;"
                                  f" {book.network} (chain {book.chain_id}) is not one: {reason}")
        return ChainView(w3, book)

    chain = wait_for(attach, what=f"waiting for the node at {rpc_url}")
    store = Store(db)
    if store.backend == "postgres":
        # One lock per matcher identity: the processes of one matcher contend for it.
        leadership: SoleLeader | PostgresLeadership = PostgresLeadership(str(db), account.address)
    else:
        leadership = SoleLeader()
    return Matcher(chain, store, account, leadership)


def take_over(matcher: Matcher) -> None:
    """What a process does on becoming leader (at start, for a sole process): finishes every
    round left unfinished, from the store and the chain, as a restart does."""
    # Reconcile is safe to run again after a failure part-way (it reads the chain first), so a
    # node that goes away during start-up is waited for too.
    matcher.submitter.stopping.clear()  # set when an earlier leadership of this process was lost
    try:
        done = wait_for(matcher.reconcile, what="waiting for the node to reconcile unfinished rounds")
    except NotLeader as lost:
        log.warning("lost the leader lock while taking over: %s", lost)
        return
    if done:
        log.info("reconciled rounds %s", done)


def serve(matcher: Matcher, host: str, port: int, round_seconds: float, admin_token: str | None) -> None:
    """Blocks until interrupted. The leader reconciles every unfinished round first: a sole
    process (SQLite), or over a shared Postgres store the process that wins the leader lock at
    start; a process elected later reconciles in the background while it serves."""
    # At start, not at the first round close: a machine that cannot build the clearing's
    # solver stops here, naming why (RuntimeError).
    netsimplex.require()
    if isinstance(matcher.leadership, PostgresLeadership):
        takeovers: list[threading.Thread] = []

        def elected() -> None:
            # Not in the election thread: it must keep renewing the lock while reconcile waits on
            # the chain.
            takeover = threading.Thread(target=take_over, args=(matcher,), name="take-over", daemon=True)
            takeovers.append(takeover)
            takeover.start()

        matcher.leadership.start(on_elected=elected, on_lost=matcher.lost_leadership)
        # As after a restart, a process that leads from the start reconciles before it serves; one
        # elected later serves first (as a follower it already did) and reconciles meanwhile.
        if matcher.leadership.wait_first_try(timeout=60) and takeovers:
            takeovers[0].join()
    else:
        take_over(matcher)
    # Every process runs the timer; it closes rounds only while this process leads.
    timer = RoundTimer(matcher, round_seconds) if round_seconds > 0 else None
    if timer:
        timer.start()
    try:
        app = create_app(matcher, admin_token)
        asyncio.run(_serve_api(uvicorn.Config(app, host=host, port=port, log_level="warning")))
    finally:
        if timer:
            timer.stop()
        matcher.shutdown()  # waits for a round being settled (by the timer or the API) before closing the store


async def _serve_api(config: uvicorn.Config) -> None:
    """`uvicorn.run`, with the worker thread pool widened first (it is per event loop)."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
    await uvicorn.Server(config).serve()
