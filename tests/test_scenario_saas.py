"""Scenario 4 (a SaaS with plan tiers) through the real executable, on the sample that
``examples/saas-tiers/make_sample.py`` builds with the example's own ``retention.toml``:
each organisation keeps its artifacts for its plan's days (looked up in
``organizations``), overridable per plan from the environment. The surviving set is
checked against an expectation computed here from the sample's own layout."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .conftest import run_exe

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "saas-tiers"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
ORGS, PER_ORG = 8, 20
PLANS = ("free", "basic", "pro", "enterprise")
DAYS = {"free": 30, "basic": 90, "pro": 365, "enterprise": -1}
ENV = {"RETENTION_MANIFEST_TTL": "3650d"}  # plans are made at a fixed clock


@pytest.fixture
def saas(tmp_path: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLE / "make_sample.py"),
            "--dir",
            str(tmp_path),
            "--orgs",
            str(ORGS),
            "--per-org",
            str(PER_ORG),
            "--now",
            NOW.isoformat(),
        ],
        check=True,
        capture_output=True,
    )
    shutil.copy(EXAMPLE / "retention.toml", tmp_path / "retention.toml")
    return tmp_path


def expected_removed(days: dict[str, int]) -> set[str]:
    """From the sample's layout (docstring of make_sample.py): organisation k is on plan
    PLANS[k % 4]; its artifact j is j * 500 / PER_ORG days and 3 + j % 5 hours old. An
    artifact goes when it is at least its plan's days old; -1 keeps forever."""
    out = set()
    for k in range(ORGS):
        limit = days[PLANS[k % 4]]
        for j in range(PER_ORG):
            age = timedelta(days=j * 500 / PER_ORG, hours=3 + j % 5)
            if limit != -1 and age >= timedelta(days=limit):
                out.add(f"a-{k:04d}-{j:04d}")
    return out


def everything() -> set[str]:
    return {f"a-{k:04d}-{j:04d}" for k in range(ORGS) for j in range(PER_ORG)}


def catalog_ids(where: Path) -> set[str]:
    with sqlite3.connect(where / "saas.db") as conn:
        return {r[0] for r in conn.execute("SELECT artifact_id FROM artifacts")}


def dump(where: Path) -> list[tuple]:
    with sqlite3.connect(where / "saas.db") as conn:
        return [
            *conn.execute("SELECT * FROM organizations ORDER BY org_id"),
            *conn.execute("SELECT * FROM artifacts ORDER BY artifact_id"),
            *conn.execute("SELECT * FROM artifact_files ORDER BY artifact_id, name"),
        ]


def dirs(where: Path) -> set[str]:
    return {p.name for p in (where / "storage").glob("org-*/a-*")}


def plan(where: Path, *more: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_exe(
        "plan",
        "--now",
        NOW.isoformat(),
        "-o",
        "m.json",
        *more,
        cwd=where,
        env={**ENV, **(env or {})},
    )


def planned(where: Path) -> set[str]:
    out = run_exe("show", "m.json", "--json", "--top", "100000", cwd=where, env=ENV)
    assert out.returncode == 0, out.stderr
    manifest = json.loads((where / "m.json").read_bytes())
    payload = manifest["payload"]
    return {e["run_id"] for e in payload["entries"]}


def test_each_organisation_loses_exactly_what_its_plan_allows(saas: Path) -> None:
    out = plan(saas)
    assert out.returncode == 0, out.stderr
    err = out.stderr.decode()
    assert "tier free: keep every run younger than 30d." in err
    assert "tier enterprise: keep every run (keep-last unlimited)." in err
    assert "org_id=org-0000, tier free:" in err  # the per-group table
    want = expected_removed(DAYS)
    assert planned(saas) == want
    organizations = dump(saas)[:ORGS]
    applied = run_exe("apply", "m.json", cwd=saas, env=ENV)
    assert applied.returncode == 0, applied.stderr
    assert catalog_ids(saas) == everything() - want
    assert dirs(saas) == everything() - want
    with sqlite3.connect(saas / "saas.db") as conn:
        files = {r[0] for r in conn.execute("SELECT artifact_id FROM artifact_files")}
    assert files == everything() - want  # the declared child rows went with their artifact
    assert dump(saas)[:ORGS] == organizations  # the lookup table is only read
    again = plan(saas)
    assert again.returncode == 0, again.stderr
    assert planned(saas) == set()  # a second run removes nothing


def test_undo_brings_every_organisation_back(saas: Path) -> None:
    before, before_dirs = dump(saas), dirs(saas)
    assert plan(saas).returncode == 0
    assert run_exe("apply", "m.json", cwd=saas, env=ENV).returncode == 0
    undone = run_exe("undo", "--within", "24h", cwd=saas, env=ENV)
    assert undone.returncode == 0, undone.stderr
    assert dump(saas) == before
    assert dirs(saas) == before_dirs


def test_environment_overrides_a_tiers_days(saas: Path) -> None:
    env = {"RETENTION_DAYS_FREE": "10", "RETENTION_DAYS_PRO": "-1"}
    out = plan(saas, env=env)
    assert out.returncode == 0, out.stderr
    assert planned(saas) == expected_removed({**DAYS, "free": 10, "pro": -1})
    shown = run_exe("config", cwd=saas, env=env).stdout.decode()
    line = next(x for x in shown.splitlines() if x.startswith("policy.tiers.free.days"))
    assert "10" in line and "env RETENTION_DAYS_FREE" in line


def test_an_environment_variable_naming_no_tier_is_refused(saas: Path) -> None:
    out = plan(saas, env={"RETENTION_DAYS_PREMIUM": "10"})
    assert out.returncode == 2
    lines = out.stderr.decode().splitlines()
    assert lines[0] == "Error: env RETENTION_DAYS_PREMIUM names no tier of policy.tiers"
    assert "RETENTION_DAYS_FREE" in lines[1]
    assert not (saas / "m.json").exists()


def test_an_organisation_on_a_plan_without_a_tier_keeps_everything(saas: Path) -> None:
    with sqlite3.connect(saas / "saas.db") as conn:
        conn.execute("UPDATE organizations SET plan = 'legacy' WHERE org_id = 'org-0000'")
    out = plan(saas)
    assert out.returncode == 0, out.stderr
    org0 = {f"a-0000-{j:04d}" for j in range(PER_ORG)}
    assert planned(saas) == expected_removed(DAYS) - org0
    err = out.stderr.decode()
    assert f"Warning: {PER_ORG} runs of 1 group kept whole: their tier ('legacy')" in err


def test_a_plan_emptying_an_organisation_needs_allow_remove_all(saas: Path) -> None:
    toml = (saas / "retention.toml").read_text().replace("allow_remove_all = true", "")
    (saas / "retention.toml").write_text(toml)
    out = plan(saas, env={"RETENTION_DAYS_FREE": "1"})
    assert out.returncode == 0, out.stderr  # every free org keeps its newest (3 hours old)
    late = run_exe(
        "plan",
        "--now",
        (NOW + timedelta(days=400)).isoformat(),
        "-o",
        "m.json",
        cwd=saas,
        env=ENV,
    )
    assert late.returncode == 2
    first = late.stderr.decode().splitlines()[0]
    assert first.startswith(
        "Error: refusing to remove every run of group org_id=org-0000, tier free"
    )
    assert "other groups" in first
    allowed = run_exe(
        "plan",
        "--now",
        (NOW + timedelta(days=400)).isoformat(),
        "--allow-remove-all",
        "-o",
        "m.json",
        cwd=saas,
        env=ENV,
    )
    assert allowed.returncode == 0, allowed.stderr


# -- erasure ----------------------------------------------------------------------------------

ERASED = {f"a-0003-{j:04d}" for j in range(PER_ORG)}  # org-0003: enterprise, kept forever


def tombstoned(where: Path) -> int:
    with sqlite3.connect(where / "saas.db") as conn:
        return sum(
            conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if t.startswith("_retention_t_") and not t.endswith("_tx")
        )


def test_an_erasure_request_removes_one_organisation_at_once_with_no_undo(saas: Path) -> None:
    before = dump(saas)
    out = plan(saas, "--erase", "org_id=org-0003")
    assert out.returncode == 0, out.stderr
    err = out.stderr.decode()
    assert "Erase every run whose org_id is 'org-0003' (erasure request)" in err
    assert "no grace period and no undo" in err
    assert planned(saas) == ERASED  # the whole organisation, although its plan keeps forever
    applied = run_exe("apply", "m.json", cwd=saas, env=ENV)
    assert applied.returncode == 0, applied.stderr
    assert "Erasure request: the erased runs' directories are purged at once" in (
        applied.stderr.decode()
    )
    report = json.loads(applied.stdout)
    assert report["erasure"] is True and report["undo_until"] is None
    assert report["txid"] in report["purged"]
    assert catalog_ids(saas) == everything() - ERASED
    assert dirs(saas) == everything() - ERASED
    assert not list((saas / "storage" / ".trash").iterdir())  # nothing left in trash
    assert tombstoned(saas) == 0  # no copy of the erased rows is kept for undo
    others = [r for r in before if "org-0003" not in str(r) and "a-0003-" not in str(r)]
    assert [r for r in dump(saas) if r in others] == others  # everyone else untouched
    for args in (("--within", "24h"), (report["txid"],)):
        undone = run_exe("undo", *args, cwd=saas, env=ENV)
        assert undone.returncode == 9
        first = undone.stderr.decode().splitlines()[0]
        assert (
            first == f"Error: cannot undo {report['txid']}: it applied an erasure request;"
            " erased runs are purged at once and never brought back"
        )


@pytest.mark.parametrize("point", ["apply.after_commit", "purge.after_begin"])
def test_an_erasure_killed_after_its_commit_is_purged_by_the_next_command(
    saas: Path, point: str
) -> None:
    assert plan(saas, "--erase", "org_id=org-0003").returncode == 0
    killed = run_exe("apply", "m.json", cwd=saas, env={**ENV, "FAILPOINT": point})
    assert killed.returncode != 0
    undone = run_exe("undo", "--within", "24h", cwd=saas, env=ENV)
    assert undone.returncode == 9, undone.stderr  # recovered, purged, then refused
    assert catalog_ids(saas) == everything() - ERASED
    assert dirs(saas) == everything() - ERASED
    assert not [p for p in (saas / "storage" / ".trash").iterdir()]
    assert tombstoned(saas) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--erase", "org_id=org-9999"),
            "erasure request: no run of 'artifacts' has org_id = 'org-9999'",
        ),
        (("--erase", "org_id"), "--erase expects COLUMN=VALUE"),
        (
            ("--erase", "org_id=org-0003", "--keep-last", "3"),
            "--erase cannot be combined with --keep-last",
        ),
        (("--erase", "plan=free"), "table 'artifacts' has no column 'plan' (named by --erase)"),
    ],
)
def test_a_bad_erasure_request_is_refused_and_writes_nothing(
    saas: Path, args: tuple[str, ...], message: str
) -> None:
    out = plan(saas, *args)
    assert out.returncode in (2, 4)
    assert out.stderr.decode().splitlines()[0].startswith(f"Error: {message}")
    assert not (saas / "m.json").exists()
