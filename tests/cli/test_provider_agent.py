"""The provider agent (`underbid provider run`) as a real process against a live anvil and a real
matcher: it keeps three leases heartbeated through chain time far past the point where a silent
provider is reportable, survives its node going away, re-offers a unit when a buyer closes its
lease, and claims; nobody can report it."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from underbid.protocol.units import base_units

from ..rpc_proxy import RpcProxy
from .conftest import H100_8

Event = dict[str, Any]


class AgentProcess:
    """`underbid provider run --json` in a subprocess; its events (JSON lines) collected by a thread."""

    def __init__(self, env: dict[str, str | None], *args: str):
        run_env = {key: value for key, value in os.environ.items() if key not in env or env[key] is not None}
        run_env.update({key: value for key, value in env.items() if value is not None})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "underbid.cli", "provider", "run", "--json", *args],
            env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[Event] = []
        self._queue: queue.Queue[Event] = queue.Queue()
        #: stderr's lines, drained as they come: a full pipe would block the agent's next write
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(json.loads(line))

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def wait_for(self, wanted: Callable[[Event], bool], what: str, timeout: float = 60) -> Event:
        """The first event from now on that `wanted` accepts (all events are kept in `events`).

        The timeout is generous: on a loaded machine one pass of the agent (a few RPC reads and a
        transaction) can take seconds; what is waited for must happen, not happen fast.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    time.sleep(0.5)  # the rest of stderr, drained by its thread
                    raise AssertionError(f"the agent exited ({self.process.returncode}) before {what}:"
                                         f" {''.join(self.stderr)[-3000:]}") from None
                continue
            self.events.append(event)
            if wanted(event):
                return event
        raise AssertionError(f"{what}: none within {timeout} s; events: {self.events[-10:]}")

    def seen_since(self, index: int, wanted: Callable[[Event], bool], what: str) -> Event:
        """The first event after `events[index]` that `wanted` accepts, already read or still to come."""
        for event in self.events[index:]:
            if wanted(event):
                return event
        return self.wait_for(wanted, what)

    def stop(self) -> Event:
        """Ctrl-C: the agent finishes the step it is in and prints its summary. The wait is long
        (a pass under load can take a while); an agent that never stops fails with its stderr."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=180)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
            stderr = "".join(self.stderr)[-3000:]
            raise AssertionError(f"the agent did not stop within 180 s of SIGINT; stderr: {stderr}") from None
        return self.wait_for(lambda event: event["event"] == "stopped", "the stop summary", timeout=30)


def _kind(name: str, **fields: Any) -> Callable[[Event], bool]:
    return lambda event: event["event"] == name and all(event.get(k) == v for k, v in fields.items())


@pytest.fixture
def agent_env(cli) -> dict[str, str | None]:
    return dict(cli.env)


def test_agent_keeps_three_leases_alive_and_reoffers_a_closed_one(cli, chain, settlement, agent_env):
    provider = ["--account", "dev:17"]
    cli("devnet", "fund", "dev:17", "--ubt", "1000")
    cli("provider", "register", "--metadata", "https://p17.example", *provider)
    cli("provider", "stake", "--amount", "400", *provider)  # 100 UBT of collateral per unit: 4 units
    me = cli("account", "show", "dev:17")["address"]

    with RpcProxy(chain.provider.uri) as proxy:
        agent = AgentProcess({**agent_env, "UNDERBID_RPC": proxy.url}, "--market", H100_8, "--capacity", "3",
                             "--price", "1.25", "--valid", "2h", "--claim-every", "60s", "--poll", "0.3", *provider)
        try:
            started = agent.wait_for(_kind("started"), "the start line")
            assert started["heartbeat_every"] == 30 and started["provider"] == me  # half the 60 s interval
            # It offers its three units at once, as one signed bid the matcher accepted.
            posted = agent.wait_for(_kind("bid", units=3), "the first bid")
            assert cli("market", "list")[0]["open_bids"] == 1 and posted["digest"].startswith("0x")

            buyers = ("dev:18", "dev:19", "dev:20")
            for buyer in buyers:
                cli("devnet", "fund", buyer, "--ubt", "100")
                cli("credits", "mint", "--ubt", "50", "--account", buyer)
                cli("escrow", "deposit", "--amount", "60", "--account", buyer)
                cli("order", "create", "--market", H100_8, "--units", "1", "--hours", "2", "--max-price", "2",
                    "--account", buyer)
            assert cli("matcher", "close-round")["matches"] == 3
            for _ in buyers:
                agent.wait_for(_kind("lease started"), "a lease start")
            leases = cli("lease", "list", "--role", "provider", *provider)
            assert len(leases) == 3 and all(v["status"] == "running" for v in leases)

            # The node goes away: the agent says why, backs off, and carries on once it is back.
            proxy.set("reset")
            failure = agent.wait_for(_kind("error"), "an error event")
            assert failure["retry_in"] >= 1 and failure["error"]
            proxy.set("pass")
            agent.wait_for(_kind("recovered"), "recovery")

            # 3 × 40 s of chain time: a silent provider would be reportable after 60 + 30 s; the agent
            # heartbeats all three leases in one transaction each time.
            for _ in range(3):
                cli("devnet", "advance", "40s", "--no-price")
                beat = agent.wait_for(_kind("heartbeat"), "a heartbeat")
                assert sorted(beat["leases"]) == sorted(v["id"] for v in leases)
            assert cli("report") == []

            # A buyer closes its lease: the agent says so, heartbeats the other two, and offers the freed unit.
            closed = next(v for v in leases if v["buyer"] == cli("account", "show", "dev:18")["address"])
            cli("lease", "close", closed["id"], "--account", "dev:18")
            ended = agent.wait_for(_kind("lease ended", lease=closed["id"]), "the lease's end")
            assert ended["reason"] == "closed by buyer"
            after_close = len(agent.events)
            agent.wait_for(_kind("bid", units=1), "a bid for the freed unit")
            # 2 × 40 s more: both heartbeats name the two running leases, and a claim (due every 60 s
            # of chain time) falls in those 80 s whenever the last one was.
            for _ in range(2):
                cli("devnet", "advance", "40s", "--no-price")
                beat = agent.wait_for(_kind("heartbeat"), "a heartbeat after the close")
                assert sorted(beat["leases"]) == sorted(v["id"] for v in leases if v["id"] != closed["id"])
            claimed = agent.seen_since(after_close, _kind("claim"), "a claim after the close")
            assert int(claimed["claimed"]) > 0
            assert cli("report") == []
        finally:
            summary = agent.stop()
    assert summary["ticks"] > 0 and int(summary["claimed"]) > 0
    # Never more than the three units offered: the three at the start, then the one a close freed
    # (a round settling between the agent's reads must not make its leased units look unoffered).
    assert [event["units"] for event in agent.events if event["event"] == "bid"] == [3, 1]
    assert agent.process.returncode == 0
    # Nobody reported a fault and the stake is whole.
    assert all(v["end_reason"] != "fault reported"
               for v in cli("lease", "list", "--all", "--role", "provider", *provider))
    assert base_units(cli("provider", "show", *provider)["staked"]) == 400 * 10**18
    running = [v for v in cli("lease", "list", "--role", "provider", *provider) if v["status"] == "running"]
    assert len(running) == 2


def test_agent_refuses_bad_configs_with_one_line(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[offer]]\nmarket = "gpu=nvidia-h10;vram=80;gpus=8;region=us-east"\ncapacity = 2\nprice = "1"\n')
    cli.fails("provider", "run", "--config", bad, "--account", "dev:17", code=1, match="did you mean")
    bad.write_text('[[offer]]\nmarket = "gpu=nvidia-h100;vram=80;gpus=8;region=us-east"\ncapacity = 0\nprice = "1"\n')
    cli.fails("provider", "run", "--config", bad, "--account", "dev:17", code=1, match="offer.0.capacity")
    bad.write_text('[[offer]]\nmarket = "gpu=nvidia-h100;vram=80;gpus=8;region=us-east"\ncapacity = 1\nprice = 1.5\n')
    cli.fails("provider", "run", "--config", bad, "--account", "dev:17", code=1, match="as a string")
    bad.write_text("offer = [")
    cli.fails("provider", "run", "--config", bad, "--account", "dev:17", code=1, match="not valid TOML")
    cli.fails("provider", "run", "--config", tmp_path / "none.toml", "--account", "dev:17", code=2,
              match="does not exist")
    cli.fails("provider", "run", "--market", H100_8, "--account", "dev:17", code=2, match="--capacity and --price")
    cli.fails("provider", "run", "--account", "dev:17", code=2, match="give the offers")
    # An unregistered account is told to register before anything is sent.
    cli("devnet", "fund", "dev:21", "--ubt", "10")
    cli.fails("provider", "run", "--market", H100_8, "--capacity", "1", "--price", "1", "--account", "dev:21",
              code=1, match="NotRegistered")
