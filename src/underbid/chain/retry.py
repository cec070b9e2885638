"""The one retry layer for JSON-RPC calls: exponential backoff under an overall deadline.

web3's own request retries are turned off (see `underbid.chain.view.connect`), so a call made
through `retry_rpc` is retried here and nowhere else, and each attempt is bounded by the HTTP
provider's request timeout. A stalled node (one that accepts connections and never answers)
therefore costs at most `deadline` plus one request timeout, never retries times retries.

- `retry_rpc(call, deadline=...)`: for the matcher's background work (reconcile, round
  settlement). Retries transport failures only (connection refused or reset, timeouts, a lost
  answer); an error the node answered with (a revert, a refused read) is raised at once.
- Request handlers do not retry: the chain reads used at intake fail fast (`ChainView`'s cached
  reads raise `ChainUnavailable`, which is not retried here) and the API answers 503.
- `wait_for(call, what=...)`: retries without a deadline, for start-up (the matcher waits for its
  node instead of exiting).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import requests
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    stop_never,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base
from web3.exceptions import TimeExhausted

log = logging.getLogger("underbid.chain.retry")
T = TypeVar("T")

#: Failures of the transport, not of the call: worth another attempt. `requests` raises these from
#: web3's HTTP provider; the built-in ConnectionError covers socket-level resets and refusals;
#: TimeExhausted is web3's receipt wait running out.
TRANSIENT: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    ConnectionError,
    TimeoutError,
    TimeExhausted,
)

#: Default overall deadline of `retry_rpc`, in seconds: no new attempt starts after it.
DEFAULT_DEADLINE = 30.0
#: Backoff bounds, in seconds.
BASE_DELAY = 0.2
MAX_DELAY = 5.0


def is_transient(exc: BaseException) -> bool:
    """True if `exc` is a transport failure that `retry_rpc` would retry."""
    return isinstance(exc, TRANSIENT)


def _log_retry(what: str, level: int) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.log(
            level, "%s: %s: %s (attempt %d, %.1fs so far); retrying in %.1fs",
            what, type(exc).__name__, exc, state.attempt_number, state.seconds_since_start or 0.0, delay,
        )

    return before_sleep


def retry_rpc(
    call: Callable[[], T],
    attempts: int | None = None,
    base_delay: float = BASE_DELAY,
    *,
    deadline: float = DEFAULT_DEADLINE,
    max_delay: float = MAX_DELAY,
    what: str = "rpc call failed",
) -> T:
    """Runs `call`, retrying transport failures with exponential backoff (with jitter) until it
    succeeds, `deadline` seconds have passed, or `attempts` attempts were made (no limit by
    default). No attempt starts, and no backoff sleep runs, past the deadline; the last failure
    is re-raised as it was. Any other exception is raised at once.

    Bounded by `deadline` + one attempt: each attempt is bounded by the provider's request
    timeout (or, for `wait_for_transaction_receipt`, by the timeout passed to it).
    """
    stop: stop_base = stop_before_delay(deadline)
    if attempts is not None:
        stop = stop | stop_after_attempt(attempts)
    retrying = Retrying(
        stop=stop,
        wait=wait_exponential_jitter(initial=base_delay, max=max_delay, jitter=base_delay),
        retry=retry_if_exception_type(TRANSIENT),
        reraise=True,
        before_sleep=_log_retry(what, logging.WARNING),
    )
    return retrying(call)


def wait_for(call: Callable[[], T], *, what: str, max_delay: float = 10.0) -> T:
    """Runs `call` until it stops failing with a transport error, however long that takes,
    logging each failure (at start-up: the matcher waits for its node rather than exiting)."""
    retrying = Retrying(
        stop=stop_never,
        wait=wait_exponential_jitter(initial=0.5, max=max_delay, jitter=0.5),
        retry=retry_if_exception_type(TRANSIENT),
        reraise=True,
        before_sleep=_log_retry(what, logging.WARNING),
    )
    return retrying(call)
