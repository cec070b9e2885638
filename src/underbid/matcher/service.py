"""Runs the matcher as a process: reconcile, then serve the API and close rounds on a timer."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn
from eth_account.signers.local import LocalAccount

from underbid.matcher.api import create_app
from underbid.chain.view import ChainView, connect
from underbid.chain.deployment import AddressBook
from underbid.matcher.rounds import Matcher, RoundTimer
from underbid.matcher.store import Store

log = logging.getLogger("underbid.matcher.service")


def build_matcher(rpc_url: str, deployment: Path, db_path: Path, account: LocalAccount) -> Matcher:
    book = AddressBook.load(deployment)
    w3 = connect(rpc_url)
    if w3.eth.chain_id != book.chain_id:
        raise ValueError(f"the node at {rpc_url} is chain {w3.eth.chain_id}, the address book is for {book.chain_id}")
    return Matcher(ChainView(w3, book), Store(db_path), account)


def serve(matcher: Matcher, host: str, port: int, round_seconds: float, admin_token: str | None) -> None:
    """Blocks until interrupted. Every submitted-but-unconfirmed round is reconciled first."""
    done = matcher.reconcile()
    if done:
        log.info("reconciled rounds %s", done)
    timer = RoundTimer(matcher, round_seconds) if round_seconds > 0 else None
    if timer:
        timer.start()
    try:
        uvicorn.run(create_app(matcher, admin_token), host=host, port=port, log_level="warning")
    finally:
        if timer:
            timer.stop()
        matcher.store.close()
