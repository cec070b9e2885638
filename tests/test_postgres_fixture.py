"""The throwaway PostgreSQL fixture itself: a real server, one fresh database per test."""

from __future__ import annotations

import subprocess


def _psql(cluster, url: str, sql: str) -> str:
    out = subprocess.run(
        [str(cluster.bindir / "psql"), url, "-At", "-c", sql], capture_output=True, text=True, check=True, timeout=30
    )
    return out.stdout.strip()


def test_each_test_gets_a_fresh_database_on_a_running_server(postgres_cluster, postgres_url):
    """Two databases from the fixture are distinct, empty and writable."""
    other = postgres_cluster.create_database()
    assert other != postgres_url
    _psql(postgres_cluster, postgres_url, "CREATE TABLE t (x int); INSERT INTO t VALUES (7)")
    assert _psql(postgres_cluster, postgres_url, "SELECT x FROM t") == "7"
    assert _psql(postgres_cluster, other, "SELECT count(*) FROM pg_tables WHERE tablename = 't'") == "0"
    assert int(_psql(postgres_cluster, postgres_url, "SHOW server_version_num")) >= 130000
