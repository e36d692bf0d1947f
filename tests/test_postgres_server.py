"""The PostgreSQL test infrastructure itself: the fixtures of tests/pgkit.py and
scripts/postgres, end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .pgkit import REQUIRE_ENV, pg_connect, pg_database

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "postgres"


def _tables(url: str) -> list[str]:
    with pg_connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    return sorted(row[0] for row in rows)


def _databases(server_url: str) -> set[str]:
    with pg_connect(server_url) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}


def test_pg_url_is_an_empty_database_that_keeps_what_is_written(pg_url: str) -> None:
    assert _tables(pg_url) == []
    with pg_connect(pg_url, autocommit=False) as conn:
        conn.execute("CREATE TABLE runs (id integer PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO runs VALUES (1, 'a'), (2, 'b')")
        conn.commit()
    with pg_connect(pg_url) as conn:
        assert conn.execute("SELECT name FROM runs ORDER BY id").fetchall() == [("a",), ("b",)]
    assert _tables(pg_url) == ["runs"]


def test_two_databases_are_separate_a_table_in_one_is_not_in_the_other(
    pg_server: str, pg_url: str
) -> None:
    with pg_database(pg_server) as other:
        names = []
        for url in (pg_url, other):
            with pg_connect(url) as conn:
                row = conn.execute("SELECT current_database()").fetchone()
            assert row is not None
            names.append(row[0])
        assert names[0] != names[1]
        with pg_connect(pg_url) as conn:
            conn.execute("CREATE TABLE only_here (x integer)")
        assert _tables(pg_url) == ["only_here"]
        assert _tables(other) == []


def test_the_database_is_dropped_afterwards_even_with_a_connection_left_open(
    pg_server: str,
) -> None:
    with pg_database(pg_server) as url:
        name = url.rsplit("/", 1)[1]
        assert name in _databases(pg_server)
        left_open = pg_connect(url)
        left_open.execute("CREATE TABLE t (x integer)")
    try:
        assert name not in _databases(pg_server)
    finally:
        left_open.close()


def test_the_server_keeps_fsync_and_synchronous_commit_on(
    pg_url: str,
) -> None:
    with pg_connect(pg_url) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()
            for name in ("fsync", "synchronous_commit", "full_page_writes")
        }
    assert settings == {name: ("on",) for name in settings}


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: as root the server runs as the postgres user, who cannot enter
    # /tmp/pytest-of-root (mode 0700).
    path = Path(tempfile.mkdtemp(prefix="retention-pg-test."))
    try:
        yield path
    finally:
        subprocess.run([str(SCRIPT), "stop", str(path)], capture_output=True, timeout=60)
        shutil.rmtree(path, ignore_errors=True)


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_scripts_postgres_starts_a_server_on_loopback_and_stops_it_twice(
    cluster_dir: Path,
) -> None:
    import psycopg

    started = _script("start", "--no-install", str(cluster_dir))
    if started.returncode == 3 and os.environ.get(REQUIRE_ENV) != "1":
        pytest.skip(f"no PostgreSQL server binaries here: {started.stderr.strip()}")
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip()
    assert url.startswith("postgresql://postgres@127.0.0.1:")
    assert url.endswith("/postgres")
    assert (cluster_dir / "url").read_text().strip() == url
    assert _script("url", str(cluster_dir)).stdout.strip() == url

    with pg_connect(url) as conn:
        row = conn.execute(
            "SELECT current_setting('listen_addresses'), current_setting('unix_socket_directories')"
        ).fetchone()
        assert row == ("127.0.0.1", str(cluster_dir.resolve() / "run"))

    # Starting again while it runs gives the same server.
    again = _script("start", "--no-install", str(cluster_dir))
    assert (again.returncode, again.stdout.strip()) == (0, url), again.stderr

    stopped = _script("stop", str(cluster_dir))
    assert stopped.returncode == 0, stopped.stderr
    with pytest.raises(psycopg.OperationalError):
        pg_connect(url).close()
    stopped_again = _script("stop", str(cluster_dir))
    assert stopped_again.returncode == 0, stopped_again.stderr
