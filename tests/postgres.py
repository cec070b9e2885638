"""A private, throwaway PostgreSQL cluster for the tests: real server binaries, a temp dir, a free port.

`scripts/postgres.sh` (run by scripts/test.sh) installs Debian's `postgresql` when it is missing.
Each pytest-xdist worker starts its own cluster (the `postgres_cluster` session fixture in
tests/conftest.py), and each test that asks for `postgres_url` gets a fresh, empty database in it.
PostgreSQL refuses to run as root, so under root (CI, this machine) the server runs as the
`postgres` OS user that Debian's package creates; the data directory is made for that user.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The superuser the clusters are made with; trust authentication on loopback only.
SUPERUSER = "underbid"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries (initdb, pg_ctl) are not installed: run scripts/postgres.sh."""


def _server_bindir() -> Path:
    """The directory of the newest installed server's initdb and pg_ctl."""
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists() and (p / "pg_ctl").exists()),
        key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0),
    )
    if versions:
        return versions[-1]
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    raise PostgresUnavailable("initdb/pg_ctl not found: run `bash scripts/postgres.sh` (installs Debian's postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """One throwaway cluster: `initdb` into a temp dir, `pg_ctl start` on 127.0.0.1:<free port>."""

    def __init__(self, *, durable: bool = False) -> None:
        #: False (tests): fsync and synchronous commit off; True (benchmarks): the server's defaults.
        self.durable = durable
        self.bindir = _server_bindir()
        # Under root the server must run as an unprivileged user; `postgres` exists wherever
        # Debian's package is installed.
        self.run_as = "postgres" if os.geteuid() == 0 else None
        # Not under pytest's tmp_path: that is root-only (0700), and the server's user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="underbid-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self.port = 0
        self._names = itertools.count(1)
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o755)

    @property
    def url(self) -> str:
        """The URL of the cluster's `postgres` maintenance database."""
        return self.url_of("postgres")

    def url_of(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Runs a server binary as the server's user; raises with its output if it fails."""
        result = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]], user=self.run_as, capture_output=True, text=True,
            timeout=timeout, cwd=self.root,
        )
        if result.returncode != 0:
            log = self.logfile.read_text()[-3000:] if self.logfile.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stdout}{result.stderr}\n{log}")
        return result

    def start(self) -> None:
        """initdb (trust auth, superuser `underbid`) and start on a free loopback port, tuned for tests."""
        self._run("initdb", "-D", str(self.datadir), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        # Durability is not under test here (a SIGKILLed *matcher* is; the server stays up), so
        # fsync is off; the socket lives in the data dir so nothing is written to /var/run.
        options = f"-c listen_addresses=127.0.0.1 -c unix_socket_directories={self.datadir} -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=64MB"
        for _ in range(5):  # a free port can be taken between probing it and the server binding it
            self.port = _free_port()
            try:
                self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60",
                          "-o", f"-p {self.port} {options}", "start")
                return
            except RuntimeError as error:
                last = error
                time.sleep(0.2)
        raise last

    def create_database(self, prefix: str = "test") -> str:
        """Creates a fresh, empty database and returns its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)
        return self.url_of(name)

    def stop(self) -> None:
        """Stops the server at once (no checkpoint) and removes its files."""
        if self.datadir.exists():
            subprocess.run(
                [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop"],
                user=self.run_as, capture_output=True, timeout=60, cwd=self.root,
            )
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def postgres_cluster(*, durable: bool = False) -> Iterator[PostgresCluster]:
    """A started throwaway cluster, stopped and deleted on exit (`durable`: see PostgresCluster)."""
    cluster = PostgresCluster(durable=durable)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
