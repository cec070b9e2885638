"""Leader election over a real Postgres: real processes contend for the advisory lock; SIGSTOP the
leader (a pause: its socket stays open); the other takes over once the lease runs out, and the
resumed zombie is fenced. (A SIGKILLed leader is replaced in tests/matcher/test_failover.py.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from underbid.matcher.leadership import LEASE, PERIOD, IntakeLockUnavailable, NotLeader, PostgresLeadership

from .conftest import wait_until

MATCHER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


class Contender:
    """`python -m tests.leader_contender` in a subprocess, its report lines in a log file."""

    def __init__(self, url: str, log: Path):
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.leader_contender", url, MATCHER],
            stdout=log.open("w"), stderr=subprocess.STDOUT,
        )

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def count(self, line: str) -> int:
        return sum(1 for seen in self.lines() if seen == line or seen.startswith(line + ":"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def contenders(postgres_url, tmp_path):
    """Two processes contending for one matcher's leader lock; returns (leader, follower)."""
    both = [Contender(postgres_url, tmp_path / f"contender{i}.log") for i in range(2)]
    try:
        wait_until("one contender elected", lambda: sum(c.count("elected") for c in both) == 1, 30)
        time.sleep(2 * PERIOD)  # more election periods: the other must stay a follower
        assert sum(c.count("elected") for c in both) == 1, [c.lines() for c in both]
        yield (both[0], both[1]) if both[0].count("elected") else (both[1], both[0])
    finally:
        for c in both:
            c.kill()


def test_paused_leader_loses_the_lease_and_is_fenced_when_it_resumes(contenders):
    """A SIGSTOPped leader's socket stays open, but the server ends its idle lock session after
    the lease: the follower takes over, and the resumed zombie's pre-submission check refuses it."""
    leader, follower = contenders
    leader.proc.send_signal(signal.SIGSTOP)
    took = wait_until("the follower elected", lambda: follower.count("elected") == 1, LEASE + 10)
    assert LEASE - 1 <= took < LEASE + 2 * PERIOD + 2
    leader.proc.send_signal(signal.SIGCONT)
    wait_until("the zombie notices", lambda: leader.count("lost") == 1, 10)
    # It is a follower now, and stays one while the new leader lives.
    time.sleep(2 * PERIOD)
    assert leader.count("elected") == 1 and follower.count("lost") == 0


def test_ensure_leader_refuses_a_follower_and_after_the_session_dies(postgres_url):
    """In one process: a follower is refused by name; the leader passes; killing its lock session
    from the server side (as a partition or the lease would) makes the very next check refuse."""
    import psycopg

    first, second = PostgresLeadership(postgres_url, MATCHER), PostgresLeadership(postgres_url, MATCHER)
    lost: list[str] = []
    try:
        first.start(on_elected=lambda: None, on_lost=lambda: lost.append("first"))
        wait_until("first elected", lambda: first.is_leader, 10)
        second.start(on_elected=lambda: None, on_lost=lambda: lost.append("second"))
        time.sleep(2 * PERIOD)
        assert not second.is_leader
        with pytest.raises(NotLeader, match="follower"):
            second.ensure_leader()
        first.ensure_leader()
        assert second.describe() == {"mode": "postgres", "leader": False, "process": second.name,
                                     "leader_process": first.name, "since": None}
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name = %s", (f"underbid-matcher leader-lock {first.name}",))
        with pytest.raises(NotLeader, match="lost the leader lock"):
            first.ensure_leader()
        assert lost == ["first"]
        # The lock is free again: one of the two (first reconnects too) holds it within seconds.
        wait_until("a leader again", lambda: first.is_leader or second.is_leader, 10)
        time.sleep(2 * PERIOD)
        assert first.is_leader != second.is_leader
    finally:
        first.stop()
        second.stop()


def test_intake_is_held_off_by_the_leaders_exclusive_intake_lock(postgres_url):
    """Across processes (here two lock holders, each with its own sessions), intake requests share
    the intake lock while the leader's close of intake holds it exclusively; an intake request
    waits at most the lease for it, then is refused by name."""
    leader = PostgresLeadership(postgres_url, MATCHER)
    intake = PostgresLeadership(postgres_url, MATCHER, lease=1.0)
    try:
        with intake.intake_shared(), intake.intake_shared():  # concurrent requests do not wait
            pass
        with leader.intake_exclusive():
            started = time.monotonic()
            with pytest.raises(IntakeLockUnavailable, match="statement timeout"), intake.intake_shared():
                pass
            assert 0.9 <= time.monotonic() - started < 3
        with intake.intake_shared():  # free again once the leader let go
            pass
    finally:
        leader.stop()
        intake.stop()


def test_a_slow_intake_request_keeps_the_intake_lock_past_the_lease(postgres_url):
    """Attack: a follower's intake request whose validation (chain reads, a big batch) outlasts the
    lease. The intake lock lived on a session the server ends after the lease idle, so the request's
    shared lock vanished while it was still to read its round and commit: the leader's close of
    intake (or its application of a batch's fills) went ahead meanwhile, and the request then
    committed a bid, with a receipt naming a round whose snapshot was already taken (or admitted it
    on stake read before fills counted after). A live request must keep the lock to its end."""
    leader = PostgresLeadership(postgres_url, MATCHER, lease=1.0)
    intake = PostgresLeadership(postgres_url, MATCHER, lease=1.0)
    try:
        with intake.intake_shared():
            time.sleep(2.5)  # validating, longer than the lease; the process is not paused
            started = time.monotonic()
            with pytest.raises(IntakeLockUnavailable, match="statement timeout"), leader.intake_exclusive():
                pass  # the leader closed intake under a request that still holds it
            assert time.monotonic() - started >= 0.9
        with leader.intake_exclusive():  # free once the request let go
            pass
    finally:
        leader.stop()
        intake.stop()
