"""The CLI against a live chain: ape's test anvil, the real contracts and a real matcher process.

Commands run in-process through click's CliRunner (the same `main` the `underbid` entry point
calls). The chain, the matcher's RPC and the address book reach the CLI through $UNDERBID_RPC,
$UNDERBID_MATCHER and $UNDERBID_DEPLOYMENT; keystores live in a temporary $UNDERBID_HOME.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from underbid.cli import main
from underbid.devnet.deploy import address_book

from ..matcher.conftest import ADMIN_TOKEN, MatcherProcess, free_port  # noqa: F401 - re-exported to the CLI tests

DATA = Path(__file__).parent / "data"
H100_8 = "gpu=nvidia-h100;vram=80;gpus=8;region=us-east"


def Matcher(rpc: str, book: Path, workdir: Path) -> MatcherProcess:  # noqa: N802 - reads as the process it starts
    """`underbid matcher run` in a subprocess, on a free port, with a fresh store (started)."""
    process = MatcherProcess(rpc, book, workdir / "matcher.db", workdir / "matcher.log")
    process.start()
    return process


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
        assert result.exit_code == 0, (
            f"underbid {' '.join(args)} -> {result.exit_code}\n{result.stdout}\n{result.stderr}"
        )
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
