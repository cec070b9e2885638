"""Parameter changes through the timelock that owns the core (OpenZeppelin TimelockController).

`through_timelock` schedules a call, lets the timelock's delay pass on chain, and executes it,
as a deployer (proposer and executor) would on a real network.
"""

from __future__ import annotations

import itertools

ZERO32 = b"\x00" * 32
_salts = itertools.count(1)


def schedule(timelock, chain, target, data: bytes, *, sender, delay: int, salt: bytes | None = None):
    """Schedules `target.call(data)`; returns (salt, the time it becomes executable)."""
    salt = salt or next(_salts).to_bytes(32, "big")
    receipt = timelock.schedule(target, 0, data, ZERO32, salt, delay, sender=sender)
    return salt, receipt.timestamp + delay


def execute(timelock, target, data: bytes, salt: bytes, *, sender):
    return timelock.execute(target, 0, data, ZERO32, salt, sender=sender)


def through_timelock(timelock, chain, contract, method: str, *args, sender, delay: int):
    """Calls `contract.method(*args)` as the timelock: schedule, wait `delay` on chain, execute.

    Returns the execute receipt. A revert of the call itself surfaces from `execute` (the
    timelock bubbles the target's revert data).
    """
    data = getattr(contract, method).encode_input(*args)
    salt, ready_at = schedule(timelock, chain, contract.address, data, sender=sender, delay=delay)
    if chain.pending_timestamp < ready_at:
        chain.pending_timestamp = ready_at
    return execute(timelock, contract.address, data, salt, sender=sender)
