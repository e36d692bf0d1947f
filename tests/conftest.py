"""Shared fixtures: a sample workspace of the default layout, a CLI runner, a fixed clock."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from retention import sample
from retention.cli import cli

pytest_plugins = ["tests.pgkit"]

NOW = datetime(2026, 11, 1, tzinfo=UTC)
NOW_TEXT = "2026-11-01T00:00:00Z"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", help="Rewrite golden files from current output."
    )


_START_DIR = os.getcwd()


@pytest.fixture(autouse=True)
def _working_directory_survives() -> Iterator[None]:
    """Fail the test that leaves this worker in a removed directory (it would otherwise
    surface as FileNotFoundError in every later test of the worker) and put it back."""
    yield
    try:
        os.getcwd()
    except FileNotFoundError:
        os.chdir(_START_DIR)
        pytest.fail("the test left the working directory in a removed directory")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scenario-1 workspace (40 runs over two years) as the current directory.

    Manifests get a long TTL through the environment so that a plan made at the fixed
    clock can still be verified today.
    """
    sample.build(tmp_path, runs=40, now=NOW)
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith("RETENTION_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("RETENTION_MANIFEST_TTL", "3650d")
    return tmp_path


def invoke(*args: str, input: bytes | None = None) -> Result:
    """Run the CLI in-process, as a user would type it."""
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def run_exe(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the real `retention` executable in a subprocess."""
    exe = Path(sys.executable).parent / "retention"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    full_env.update(env or {})
    return subprocess.run([str(exe), *args], cwd=cwd, env=full_env, capture_output=True, timeout=60)
