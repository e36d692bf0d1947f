"""The participant conformance suite: the same tests, through the real executable, for every
catalog (`retention.catalogs`): SQLite, PostgreSQL and the JSON document. Each proves one
promise of the protocol (../DESIGN's invariants, as README states them) that users rely on
whatever their catalog:

* plan changes nothing; apply removes exactly the manifest's entries; a second plan finds
  nothing; `check` finds nothing and `trash` lists what went;
* an entry the application changed after the plan is skipped and kept, never lost;
* a manifest changed after signing is refused (exit 5) and nothing changes;
* a kill just before the commit point rolls back, just after it rolls forward (`recover`),
  and `check` agrees after each; undo then restores the catalog exactly;
* undo restores the catalog (and artifacts) to an equal value; once purged, undo refuses
  (exit 9);
* the application holding its lock (a row lock, the database's write lock, its lock file)
  refuses the apply with exit 4, nothing changed, and the same manifest applies after;
* a second retention while one applies is refused with exit 6; the first finishes.

A `Backend` adapts each catalog: how to build a small workspace (with entries to delete and
entries to keep), read the catalog back as a comparable value, change one entry the way the
application would, and hold the application's lock. The SQL catalogs also have artifact
directories; the snapshot covers them.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import filelock
import pytest

from . import crashkit as ck
from .pgkit import pg_connect

NOW = "2026-06-01T00:00:00+00:00"
LATER = "2026-06-01T00:01:00+00:00"
ROOT = Path(__file__).resolve().parent.parent


class Backend:
    """One catalog kind's workspace, and what the tests need to know of it."""

    name = ""
    before_commit = ""  # the last failpoint before the commit point
    after_commit = ""  # the first failpoint after it
    after_begin = ""  # a failpoint after the workspace lock is taken, inside the apply
    plan_args: tuple[str, ...] = ()

    def __init__(self, ws: Path, env: dict[str, str]) -> None:
        self.ws = ws
        self.env = env

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [ck.EXE, *args],
            cwd=self.ws,
            env={**self.env, **extra},
            capture_output=True,
            timeout=120,
        )

    def plan(self, now: str = NOW) -> set[str]:
        out = self.run("plan", "--now", now, *self.plan_args, "-o", "m.json")
        assert out.returncode == 0, out.stderr
        return self.planned(self.ws / "m.json")

    def planned(self, manifest: Path) -> set[str]:
        raise NotImplementedError

    def ids(self) -> set[str]:
        """The ids of the entries (runs, records) in the catalog now."""
        raise NotImplementedError

    def snapshot(self) -> Any:
        """The catalog (and artifacts) as a value that compares equal iff nothing changed."""
        raise NotImplementedError

    def touch(self, entry: str) -> None:
        """Change one entry as the application would (after a plan)."""
        raise NotImplementedError

    def app_lock(self) -> AbstractContextManager[None]:
        """The application holding what apply must wait for."""
        raise NotImplementedError


class SqliteBackend(Backend):
    name = "sqlite"
    before_commit = "apply.before_commit"
    after_commit = "apply.after_commit"
    after_begin = "apply.after_begin"
    plan_args = ("--keep-last", "4")

    @classmethod
    def make(cls, tmp: Path, request: pytest.FixtureRequest) -> Backend:
        ck.build(tmp, runs=10)
        return cls(tmp, dict(ck.BASE_ENV))

    def planned(self, manifest: Path) -> set[str]:
        return {e["run_id"] for e in json.loads(manifest.read_bytes())["payload"]["entries"]}

    def ids(self) -> set[str]:
        return set(ck.dump(self.ws))

    def snapshot(self) -> Any:
        return ck.snapshot(self.ws)

    def touch(self, entry: str) -> None:
        c = sqlite3.connect(self.ws / "data/catalog.db")
        with c:
            c.execute("UPDATE runs SET sharpe = sharpe + 1 WHERE run_id = ?", (entry,))
        c.close()

    @contextmanager
    def app_lock(self) -> Iterator[None]:
        c = sqlite3.connect(self.ws / "data/catalog.db", isolation_level=None)
        c.execute("BEGIN IMMEDIATE")  # the database's write lock, as a writer holds it
        try:
            yield
        finally:
            c.execute("ROLLBACK")
            c.close()


class PostgresBackend(Backend):
    name = "postgres"
    before_commit = "apply.before_commit"
    after_commit = "apply.after_commit"
    after_begin = "apply.after_begin"

    @classmethod
    def make(cls, tmp: Path, request: pytest.FixtureRequest) -> Backend:
        from .test_postgres_catalog import make

        url = request.getfixturevalue("pg_url")
        ws, env = make(tmp, url, per=6)
        backend = cls(ws, env)
        backend.url = url
        return backend

    url = ""

    def planned(self, manifest: Path) -> set[str]:
        return {e["run_id"] for e in json.loads(manifest.read_bytes())["payload"]["entries"]}

    def ids(self) -> set[str]:
        with pg_connect(self.url) as c:
            return {r[0] for r in c.execute("SELECT id FROM executions")}

    def snapshot(self) -> Any:
        from .test_postgres_catalog import snapshot, trees

        rows = snapshot(self.url)
        del rows["execution_retention_policies"]  # (apply writes its cleanup record there)
        return {"rows": rows, "trees": trees(self.ws)}

    def touch(self, entry: str) -> None:
        with pg_connect(self.url) as c:
            c.execute("UPDATE executions SET status = status || '!' WHERE id = %s", (entry,))

    @contextmanager
    def app_lock(self) -> Iterator[None]:
        # Every planned row locked: whichever the apply reaches first, it waits.
        with pg_connect(self.url, autocommit=False) as app:
            app.execute("SELECT * FROM executions FOR UPDATE")
            try:
                yield
            finally:
                app.rollback()


class JsondocBackend(Backend):
    name = "jsondoc"
    before_commit = "jobstore.apply.after_tombstone"
    after_commit = "jobstore.apply.after_replace"
    after_begin = "jobstore.apply.after_begin"
    store = Path("runtime/async_jobs/store.v1.json")

    @classmethod
    def make(cls, tmp: Path, request: pytest.FixtureRequest) -> Backend:
        shutil.copytree(ROOT / "examples/async-jobstore", tmp)
        subprocess.run(
            [sys.executable, "make_sample.py", "--jobs", "12", "--now", NOW, "--seed", "4"],
            cwd=tmp,
            check=True,
            capture_output=True,
        )
        return cls(tmp, dict(ck.BASE_ENV))

    def planned(self, manifest: Path) -> set[str]:
        payload = json.loads(manifest.read_bytes())["payload"]
        return {f"{t['spec']['name']}/{e['id']}" for t in payload["targets"] for e in t["entries"]}

    def _doc(self) -> dict[str, Any]:
        return json.loads((self.ws / self.store).read_bytes())

    def ids(self) -> set[str]:
        doc = self._doc()
        return {f"job_results/{k}" for k in doc["job_results"]} | {
            f"job_events/{e['event_id']}" for e in doc["job_events"]
        }

    def snapshot(self) -> Any:
        return self._doc()

    def touch(self, entry: str) -> None:
        doc = self._doc()
        target, rid = entry.split("/", 1)
        if target == "job_results":
            doc["job_results"][rid]["result"] = {"rewritten": True}
        else:
            next(e for e in doc["job_events"] if e["event_id"] == rid)["type"] = "rewritten"
        (self.ws / self.store).write_text(json.dumps(doc, indent=2))

    @contextmanager
    def app_lock(self) -> Iterator[None]:
        with filelock.FileLock(str(self.ws / "runtime/async_jobs/store.v1.json.lock")):
            yield


BACKENDS = {b.name: b for b in (SqliteBackend, PostgresBackend, JsondocBackend)}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param].make(tmp_path / "ws", request)


def findings(b: Backend) -> list[dict[str, Any]]:
    out = b.run("check", "--json")
    assert out.returncode in (0, 10), out.stderr
    return json.loads(out.stdout)["findings"]


def test_plan_is_read_only_apply_removes_exactly_the_manifest_undo_restores_it_exactly(
    backend: Backend,
) -> None:
    """The whole life of one manifest: plan changes nothing; a copy changed after signing
    is refused (exit 5), nothing changed; apply removes exactly its entries, `check` finds
    nothing and `trash` lists them; a second plan finds nothing; undo restores an equal
    catalog; once purged, an apply cannot be undone (exit 9)."""
    before, ids = backend.snapshot(), backend.ids()
    planned = backend.plan()
    assert planned and planned < ids  # something to delete, something kept
    assert backend.snapshot() == before
    m = backend.ws / "m.json"
    data, n = re.subn(rb'("expires_at":\s*")2(\d{3})', rb"\g<1>3\2", m.read_bytes())
    assert n == 1  # the expiry pushed a thousand years on, the signature left as it was
    (backend.ws / "tampered.json").write_bytes(data)
    out = backend.run("apply", "tampered.json")
    assert out.returncode == 5, out.stderr
    assert out.stderr.decode().startswith("Error: ")
    assert backend.snapshot() == before
    out = backend.run("apply", "m.json")
    assert out.returncode == 0, out.stderr
    assert backend.ids() == ids - planned
    assert findings(backend) == []
    shown = json.loads(backend.run("trash", "--json").stdout)
    assert shown["runs"] == len(planned)
    assert len(shown["entries"]) == len(planned)
    after = backend.snapshot()
    assert backend.plan(now=LATER) == set()  # a second plan finds nothing
    again = backend.run("apply", "m.json")
    assert again.returncode == 0, again.stderr
    assert backend.snapshot() == after
    out = backend.run("undo", "--within", "1h")
    assert out.returncode == 0, out.stderr
    assert backend.snapshot() == before
    assert findings(backend) == []
    assert json.loads(backend.run("trash", "--json").stdout)["runs"] == 0
    backend.plan(now=LATER)  # (the first plan again would be the same, applied, manifest)
    out = backend.run("apply", "m.json")
    assert out.returncode == 0, out.stderr
    txid = json.loads(out.stdout)["txid"]
    applied = backend.snapshot()
    out = backend.run("purge", "--all", "--yes")
    assert out.returncode == 0, out.stderr
    refused = backend.run("undo", txid)
    assert refused.returncode == 9, refused.stderr
    assert backend.snapshot() == applied
    assert findings(backend) == []


def test_an_entry_changed_after_the_plan_is_skipped_and_kept(backend: Backend) -> None:
    ids = backend.ids()
    planned = backend.plan()
    changed = sorted(planned)[0]
    backend.touch(changed)
    out = backend.run("apply", "m.json")
    assert out.returncode == 3, out.stderr  # done, but not all of it: exit 3 says so
    assert backend.ids() == (ids - planned) | {changed}
    assert findings(backend) == []


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_kill_at_the_commit_point_is_recovered_by_the_catalog_s_decision_then_undone(
    backend: Backend, where: str
) -> None:
    before, ids = backend.snapshot(), backend.ids()
    planned = backend.plan()
    point = backend.before_commit if where == "before" else backend.after_commit
    killed = backend.run("apply", "m.json", FAILPOINT=point)
    assert ck.crashed(killed), killed.stderr
    assert [f["kind"] for f in findings(backend)] == ["interrupted"]
    out = backend.run("recover")
    assert out.returncode == 0, out.stderr
    assert findings(backend) == []
    if where == "before":
        assert backend.snapshot() == before  # rolled back: the catalog never changed
        return
    assert backend.ids() == ids - planned  # rolled forward
    out = backend.run("undo", "--within", "1h")
    assert out.returncode == 0, out.stderr
    assert backend.snapshot() == before
    assert findings(backend) == []


def test_the_application_s_lock_and_a_second_retention_are_refused_nothing_changed(
    backend: Backend,
) -> None:
    """The application holding its lock (a row lock, the write lock, its lock file) refuses
    the apply after catalog.busy_timeout (exit 4), nothing changed; a second retention while
    one applies is refused at once (exit 6); the first one finishes."""
    from .test_postgres_catalog import resume, start_paused

    ids = backend.ids()
    planned = backend.plan()
    before = backend.snapshot()
    with backend.app_lock():
        out = backend.run("apply", "m.json", RETENTION_BUSY_TIMEOUT="1s")
    assert out.returncode == 4, out.stderr
    assert backend.snapshot() == before
    assert findings(backend) == []
    proc, sync = start_paused(backend.ws, backend.env, backend.after_begin, "apply", "m.json")
    try:
        second = backend.run("apply", "m.json")
    finally:
        done = resume(proc, sync)
    assert second.returncode == 6, second.stderr
    assert done.returncode == 0, done.stderr
    assert backend.ids() == ids - planned
    assert findings(backend) == []
