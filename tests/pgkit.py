"""PostgreSQL for the tests: a server URL, a fresh database per test, a connection helper.

Registered for the whole suite by ``pytest_plugins`` in tests/conftest.py.

- ``pg_server`` (session): the server's base URL, from ``TEST_PG_URL``
  (scripts/test starts a throwaway server with scripts/postgres and sets it). Without a
  reachable server the tests that use it skip, or fail when ``TEST_REQUIRE_POSTGRES=1``
  (as CI sets it: a CI run must not pass with the PostgreSQL tests skipped).
- ``pg_url`` (function): the URL of a new, empty database ``t_<hex>`` on that server,
  dropped after the test even if connections to it are still open.
- ``pg_database(server_url)``: the same as a context manager, for a test that needs more
  than one database.
- ``pg_connect(url)``: a psycopg 3 connection.

psycopg is imported on use: the suite still loads where it is not installed (the
PostgreSQL tests then skip or fail as above).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

if TYPE_CHECKING:
    import psycopg

URL_ENV = "TEST_PG_URL"
REQUIRE_ENV = "TEST_REQUIRE_POSTGRES"
MIN_SERVER_VERSION = 130000  # DROP DATABASE ... WITH (FORCE)
CONNECT_TIMEOUT = 5  # seconds


def pg_connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A psycopg 3 connection to ``url``; autocommit by default (each statement commits:
    what setup code and CREATE/DROP DATABASE need). Pass ``autocommit=False`` for
    explicit transactions. Use it as a context manager to close it."""
    import psycopg

    return psycopg.connect(url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT)


def database_url(server_url: str, name: str) -> str:
    """``server_url`` with its database replaced by ``name`` (query parameters kept)."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + name))


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(
            f"{REQUIRE_ENV}=1 but {reason}. scripts/test starts a throwaway server with "
            f"scripts/postgres (see its message if it could not), or set {URL_ENV} to the URL "
            "of a PostgreSQL 13+ server where databases can be created.",
            pytrace=False,
        )
    pytest.skip(f"no PostgreSQL server: {reason} (scripts/test starts one)")


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The base URL of the test server (its maintenance database), checked reachable."""
    url = os.environ.get(URL_ENV, "").strip()
    if not url:
        _unavailable(f"{URL_ENV} is not set")
    try:
        import psycopg
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[test]')")
    try:
        with pg_connect(url) as conn:
            version = conn.info.server_version
    except psycopg.Error as exc:
        _unavailable(f"cannot connect to {URL_ENV}={url}: {str(exc).strip()}")
    if version < MIN_SERVER_VERSION:
        _unavailable(f"the server at {url} is version {version}; 13 or newer is needed")
    return url


@contextmanager
def pg_database(server_url: str, template: str | None = None) -> Iterator[str]:
    """Create a fresh database on the server and yield its URL; drop it on exit, closing
    any connections still open to it. Empty, or a copy of the database ``template`` (a
    URL or a name; nothing may be connected to it meanwhile)."""
    name = "t_" + secrets.token_hex(8)
    source = "template0" if template is None else urlsplit(template).path.lstrip("/") or template
    with pg_connect(server_url) as admin:
        # template0: empty whatever was added to template1 on a shared server.
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    try:
        yield database_url(server_url, name)
    finally:
        with pg_connect(server_url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """The URL of a new, empty database for this test alone (dropped afterwards)."""
    with pg_database(pg_server) as url:
        yield url
