"""The CLI against a live chain: ape's test anvil, the real contracts and a real matcher process.

Commands run in-process through click's CliRunner (the same `main` the `underbid` entry point
calls). The chain, the matcher's RPC and the address book reach the CLI through $UNDERBID_RPC,
$UNDERBID_MATCHER and $UNDERBID_DEPLOYMENT; keystores live in a temporary $UNDERBID_HOME.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from underbid.cli import main
from underbid.deploy import address_book

DATA = Path(__file__).parent / "data"
ADMIN_TOKEN = "cli-test-admin-token"
H100_8 = "gpu=nvidia-h100;vram=80;gpus=8;region=us-east"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Matcher:
    """`underbid matcher run` in a subprocess, on a free port, with a fresh store."""

    def __init__(self, rpc: str, book: Path, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "matcher.log"
        cmd = [sys.executable, "-m", "underbid.cli", "matcher", "run", "--dev", "--rpc", rpc,
               "--deployment", str(book), "--db", str(workdir / "matcher.db"), "--port", str(self.port),
               "--round-seconds", "0", "--admin-token", ADMIN_TOKEN]
        env = {k: v for k, v in os.environ.items() if k not in ("UNDERBID_MATCHER_KEY", "UNDERBID_FAILPOINT")}
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"matcher exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("matcher did not come up")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class Cli:
    """Runs `underbid ...` in-process. `cli(...)` expects success and returns the parsed --json output."""

    env: dict[str, str]
    runner: CliRunner = field(default_factory=lambda: CliRunner(mix_stderr=False))

    def run(self, *args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
        return self.runner.invoke(main, [str(a) for a in args], env={**self.env, **(env or {})}, input=input,
                                  catch_exceptions=False)

    def __call__(self, *args: str, env: dict[str, str] | None = None, input: str | None = None) -> Any:
        result = self.run(*args, "--json", env=env, input=input)
        assert result.exit_code == 0, f"underbid {' '.join(args)} -> {result.exit_code}\n{result.stdout}\n{result.stderr}"
        return json.loads(result.stdout)

    def fails(self, *args: str, code: int, match: str, env: dict[str, str] | None = None) -> str:
        """Runs a command that must fail with `code` and exactly one line, `error: ...` containing `match`."""
        result = self.run(*args, env=env)
        err = result.stderr.strip()
        assert result.exit_code == code, f"exit {result.exit_code} (want {code}): {result.stdout}{err}"
        assert result.stdout.strip() == "", f"unexpected stdout: {result.stdout!r}"  # hidden prompts echo newlines
        assert "\n" not in err and err.startswith("error: "), f"not one error line: {err!r}"
        assert "Traceback" not in err
        assert match.lower() in err.lower(), f"{match!r} not in {err!r}"
        return err


def make_cli(workdir: Path, rpc: str, book: Path, matcher_url: str) -> Cli:
    return Cli(env={
        "UNDERBID_HOME": str(workdir / "home"),
        "UNDERBID_DEVNET_DIR": str(workdir / "devnet"),  # never the developer's own devnet
        "UNDERBID_RPC": rpc,
        "UNDERBID_MATCHER": matcher_url,
        "UNDERBID_DEPLOYMENT": str(book),
        "UNDERBID_ADMIN_TOKEN": ADMIN_TOKEN,
        "UNDERBID_SCRYPT_N": "1024",  # fast keystores for tests; the default is 2**18
        "UNDERBID_PASSWORD": None,
        "UNDERBID_ACCOUNT": None,
        "COLUMNS": "200",
    })


@pytest.fixture
def cli_book(tmp_path, protocol, deployer, params) -> Path:
    return address_book(protocol, "local", deployer, params).save(tmp_path / "local.json")


@pytest.fixture
def cli_matcher(tmp_path, cli_book, chain):
    process = Matcher(chain.provider.uri, cli_book, tmp_path)
    yield process
    process.stop()


@pytest.fixture
def cli(tmp_path, chain, cli_book, cli_matcher) -> Cli:
    return make_cli(tmp_path, chain.provider.uri, cli_book, cli_matcher.url)
