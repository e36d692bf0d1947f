"""plan at a million runs: the shortcuts that make it cheap give exactly what the full
computation gives.

* `_overlapping` computes the full artifact path only of runs whose path may begin like a
  candidate's (`_PathKeys`); checked here against the full computation of every run's path
  on catalogs full of awkward values (ints and their text, bytes, NULL, ``/`` and ``..``
  inside values, URIs, the trash, absolute paths), and end to end: shared and nested
  directories are still refused.
* `time_reader` reads integer epochs without `parse_stored_time`'s generic checks, and
  gives what it gives for every value and format.
* `Item` and `Verdict` are not tracked by the cyclic garbage collector (one per run).
"""

from __future__ import annotations

import gc
import json
import os
import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from retention.catalog import OddRows, time_reader
from retention.catalogs import open_catalog
from retention.catalogs.sqlite import ODD_ROWS_MAX
from retention.config import load_config
from retention.durations import parse_stored_time
from retention.errors import ConfigError
from retention.planner import (
    _overlapping,
    _prefetch_odd,
    artifact_rel_path,
    build_plan,
    candidate_rel_path,
)
from retention.policy import Item, Verdict
from retention.store import OutsideRoot, ancestors, display

from . import crashkit as ck
from .conftest import NOW

ROOT = Path("/srv/artifacts")


class _Catalog:
    """What `_overlapping` reads of a catalog: every run's path columns."""

    def __init__(self, cols: list[str], rows: list[tuple[Any, ...]]) -> None:
        self.cols, self.rows = cols, rows

    def path_columns(self) -> list[str]:
        return self.cols

    def path_tuples(
        self, skip_plain: Any = None, odd: Any = None
    ) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
        return self.cols, iter(self.rows)  # every row: the hint is only a hint

    def iter_path_rows(self) -> Iterator[dict[str, Any]]:
        for row in self.rows:
            yield dict(zip(self.cols, row, strict=True))


def _reference(cfg: Any, cat: _Catalog, root: Path, paths: list[tuple[Any, bytes | None]]):
    """`_overlapping` as it was: the full path of every run of the catalog."""
    by_path: dict[bytes, list[Any]] = {}
    for run_id, rel in paths:
        if rel is not None:
            by_path.setdefault(rel, []).append(run_id)
    under: dict[bytes, list[bytes]] = {}
    for rel in by_path:
        for a in ancestors(rel):
            under.setdefault(a, []).append(rel)
    bad: dict[Any, str] = {}

    def mark(rel: bytes, why: str) -> None:
        for rid in by_path[rel]:
            bad.setdefault(rid, f"artifact directory {display(rel)} {why}")

    for rel, ids in by_path.items():
        if len(ids) > 1:
            mark(rel, f"is shared by {len(ids)} runs of the plan")
        for a in ancestors(rel):
            if a in by_path:
                mark(rel, f"lies inside run {by_path[a][0]}'s directory")
                mark(a, f"contains run {ids[0]}'s directory")
    candidates = {rid for rid, _ in paths}
    for row in cat.iter_path_rows():
        rid = row[cfg.id_column]
        if rid in candidates:
            continue
        try:
            other = artifact_rel_path(cfg, row, root)
        except (OutsideRoot, ValueError):
            continue
        if other is None:
            continue
        if other in by_path:
            mark(other, f"is also the directory of run {rid}, which is kept")
        for rel in under.get(other, ()):
            mark(rel, f"lies inside the directory of run {rid}, which is kept")
        if b"/" in other:
            for a in ancestors(other):
                if a in by_path:
                    mark(a, f"contains the directory of run {rid}, which is kept")
    return bad


# Values a path column or a template field may hold, the awkward ones many times over.
_PIECES: list[Any] = [
    "a", "b", "c", "ab", "a/b", "a/b/c", "b/a", "", ".", "..", "a/..", "./a", "a//b", "a/",
    "/a", "x:y", "file:a", "file:///srv/artifacts/a", "s3:a", ".trash", ".trash/a", "a\0b",
    "\udcff", "\ud800", "ü", 42, "42", 7, 4.5, True, None, b"a", b"\xff", b"a/b",
    "/srv/artifacts/a", "/srv/artifacts/a/b", "/srv/artifacts/", "/srv/artifacts//a",
    "/srv/artifactsa", "/elsewhere/a", "{a}", "a b",
]  # fmt: skip

_TEMPLATES = [
    "{x}",
    "{x}/{y}",
    "exp/{x}",
    "{x}-{y}",
    "{x}/run-{y}",
    "{x}/{y}/{x}",
    "./{x}",
    "/srv/artifacts/{x}",
    "/elsewhere/{x}",
    "a:{x}/{y}",
    "{x}:{y}",
    "{x}/{y}:",
    "{{lit}}/{x}",
    "fixed",
    ".trash/{x}",
]


def _config(template: str | None, column: str | None) -> Any:
    cfg = load_config(None, env={})
    return msgspec.structs.replace(cfg, id_column="id", path_template=template, path_column=column)


def _sqlite_config(db: Path, template: str) -> Any:
    """`_config` for a real SQLite catalog at ``db`` whose id column is ``run_id``."""
    return msgspec.structs.replace(
        _config(template, None),
        id_column="run_id",
        catalog_path=str(db),
        artifact_root=str(ROOT),
        child_tables=[],
    )


def _case(rng: random.Random, cfg: Any, n: int) -> tuple[_Catalog, list[tuple[Any, bytes | None]]]:
    cols = ["id", "x", "y", "p"]
    rows = []
    for i in range(n):
        rid: Any = i if rng.random() < 0.2 else f"r{i}"
        rows.append((rid, *(rng.choice(_PIECES) for _ in range(3))))
    if cfg.path_column:
        cols = ["id", "p"]
        rows = [(r[0], r[3]) for r in rows]
    elif cfg.path_template and "{y}" not in cfg.path_template:
        cols = ["id", "x"]
        rows = [(r[0], r[1]) for r in rows]
    paths = []
    for row in rng.sample(rows, k=rng.randint(0, n)):
        try:
            rel = artifact_rel_path(cfg, dict(zip(cols, row, strict=True)), ROOT)
        except (OutsideRoot, ValueError):
            continue
        paths.append((row[0], rel))
    return _Catalog(cols, rows), paths


def _outcome(f: Any, *args: Any) -> Any:
    try:
        return f(*args)
    except (OutsideRoot, ValueError, ConfigError) as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize(
    "setting", [*_TEMPLATES, "{id}", "{x!r}", "{x:>3}", "{x.real}", "{0}", "path_column"]
)
def test_candidate_paths_are_exactly_artifact_rel_path(setting: str) -> None:
    """plan's candidate paths (`candidate_rel_path`, a shortcut for a one-field template's
    plain names) are `artifact_rel_path`'s, for every awkward value: the same path, or the
    same refusal with the same message."""
    column = setting == "path_column"
    cfg = _config(None if column else setting, "p" if column else None)
    cols = ["id", "p"] if column else ["id", *(f for f in ("x", "y") if "{" + f in setting)]
    rel_of = candidate_rel_path(cfg, cols, ROOT)
    values = [*_PIECES, ".trash", ".trash2", "r-1", "exp 1"]
    for a in values:
        for b in values if len(cols) == 3 else [None]:
            row: tuple[Any, ...] = {1: (a,), 2: ("r", a), 3: ("r", a, b)}[len(cols)]
            want = _outcome(artifact_rel_path, cfg, dict(zip(cols, row, strict=True)), ROOT)
            assert _outcome(rel_of, row) == want, (setting, row)


@pytest.mark.parametrize("setting", [*_TEMPLATES, "path_column"])
def test_overlaps_found_with_the_shortcut_are_those_of_the_full_computation(setting: str) -> None:
    rng = random.Random(setting)
    column = setting == "path_column"
    cfg = _config(None if column else setting, "p" if column else None)
    found = 0
    for _ in range(150):
        cat, paths = _case(rng, cfg, rng.randint(1, 60))
        got = _overlapping(cfg, cat, ROOT, paths)  # type: ignore[arg-type]
        assert got == _reference(cfg, cat, ROOT, paths)
        found += len(got)
    # The cases do hold overlaps (none can where every path is refused).
    assert found or setting in ("/elsewhere/{x}", ".trash/{x}", "a:{x}/{y}")


@pytest.mark.parametrize("field", ["x", "run_id"])
def test_sqlite_leaves_out_in_sql_only_rows_the_overlap_check_would_skip(
    tmp_path: Path, field: str
) -> None:
    """With a one-field template, SQLite leaves out in SQL the runs whose value is a plain
    name no candidate's path begins with: on a real catalog full of awkward values (ints,
    reals, blobs, NULL, ``/``, ``:``, NUL, ``.``, ``..``, non-ASCII, names differing only
    in case), exactly the rows the loop would not skip come back, and the overlaps found
    are those of the full computation."""
    rng = random.Random(field)
    db = tmp_path / "catalog.db"
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE runs (run_id, created_at INTEGER, x)")
    # What SQLite stores as it reads it back: no lone surrogate, no bool (stored as 1).
    pieces = [
        p
        for p in _PIECES
        if type(p) is not bool and not (isinstance(p, str) and "\ud800" <= p[:1] <= "\udfff")
    ]
    pieces += ["A", "Ab", "r1", "R1", "ü/x", "é", "a\0"]
    rows = []
    for i in range(3000):
        rid: Any = i if rng.random() < 0.2 else f"r{i}"
        x = rng.choice(pieces) if rng.random() < 0.3 else f"e{i % 700}"
        rows.append((rid, i, x))
    c.executemany("INSERT INTO runs VALUES (?, ?, ?)", rows)
    c.commit()
    c.close()
    cfg = _sqlite_config(db, "{" + field + "}")
    cols = ["run_id", "x"] if field == "x" else ["run_id"]
    fake = _Catalog(cols, [r[:1] + r[2:] if field == "x" else r[:1] for r in rows])
    for _ in range(40):
        paths = []
        for row in rng.sample(fake.rows, k=rng.randint(1, 400)):
            try:
                rel = artifact_rel_path(cfg, dict(zip(cols, row, strict=True)), ROOT)
            except (OutsideRoot, ValueError):
                continue
            paths.append((row[0], rel))
        wanted = {os.fsdecode(rel) for _, rel in paths if rel is not None}
        with open_catalog(cfg) as cat:
            got_cols, got = cat.path_tuples((field, wanted))
            returned = list(got)
            assert _overlapping(cfg, cat, ROOT, paths) == _reference(cfg, fake, ROOT, paths)
            # The same rows, and candidates refused, with the odd rows fetched beforehand in
            # a thread (the rows come in another order: of several other runs, a reason may
            # name another).
            _, got = cat.path_tuples((field, wanted), cat.prefetch_odd(field))
            assert sorted(map(repr, got)) == sorted(map(repr, returned))
            odd = cat.prefetch_odd(field)
            got_bad = _overlapping(cfg, cat, ROOT, paths, odd)
            assert got_bad.keys() == _reference(cfg, fake, ROOT, paths).keys()
        assert got_cols == cols
        at = cols.index(field)
        must = [
            r
            for r in fake.rows
            if not (
                type(r[at]) is str
                and r[at] not in wanted
                and r[at] not in ("", ".", "..")
                and not any(ch in r[at] for ch in "/:\0")
            )
        ]
        # Exactly those (the column compares as bytes): none the loop needs is left out,
        # every other is.
        assert {r[0] for r in returned} == {r[0] for r in must}


@pytest.mark.parametrize(
    "declare",
    [
        "CREATE TABLE runs (run_id PRIMARY KEY, created_at INTEGER)",
        "CREATE TABLE runs (run_id, created_at INTEGER); CREATE UNIQUE INDEX u ON runs(run_id)",
        "CREATE TABLE runs (run_id UNIQUE COLLATE NOCASE, created_at INTEGER)",
    ],
)
def test_a_unique_id_column_lets_sqlite_leave_out_the_candidates_own_rows(
    tmp_path: Path, declare: str
) -> None:
    """With the template ``{run_id}`` and a unique index on the id column, a candidate's
    id as text is held by its own row alone: SQLite then returns only the rows whose id is
    not a plain name and those naming what some candidate's path is other than as its own
    text id (an int 42 beside the text "42", "./a" beside "a"), and the overlaps found are
    still those of the full computation (untyped column: ints, reals, blobs and their
    text side by side; under NOCASE, names that differ only in case cannot both be)."""
    rng = random.Random(declare)
    db = tmp_path / "catalog.db"
    c = sqlite3.connect(db)
    c.executescript(declare)
    pieces = [
        p
        for p in _PIECES
        if p is not None
        and type(p) is not bool
        and not (isinstance(p, str) and "\ud800" <= p[:1] <= "\udfff")
    ]
    ids: list[Any] = [*pieces, "A", "Ab", "r1", "R1", "ü/x", "é", "a\0", "r7/sub", 8, "8"]
    ids += [i if rng.random() < 0.2 else f"r{i}" for i in range(10, 3000)]
    rows = []
    for rid in ids:
        try:
            c.execute("INSERT INTO runs VALUES (?, 0)", (rid,))
            rows.append((rid,))
        except sqlite3.IntegrityError:
            pass  # equal under the column's collation to one already there
    c.commit()
    c.close()
    cfg = _sqlite_config(db, "{run_id}")
    fake = _Catalog(["run_id"], rows)
    with open_catalog(cfg) as cat:
        assert cat.unique_column("run_id")
    for _ in range(40):
        paths = []
        for (rid,) in rng.sample(rows, k=rng.randint(1, 400)):
            try:
                rel = artifact_rel_path(cfg, {"run_id": rid}, ROOT)
            except (OutsideRoot, ValueError):
                continue
            paths.append((rid, rel))
        with open_catalog(cfg) as cat:
            # The same candidates refused. Of several reasons, or several other runs, the
            # one a candidate's names follows the order the rows come in (here the
            # index's, not the insertion order the reference reads).
            got_bad = _overlapping(cfg, cat, ROOT, paths)
            assert got_bad.keys() == _reference(cfg, fake, ROOT, paths).keys()
            wanted = {os.fsdecode(rel) for _, rel in paths if rel is not None}
            own = {rid for rid, _ in paths if type(rid) is str}
            _, got = cat.path_tuples(("run_id", wanted - own))
            returned = {r[0] for r in got}
            got_bad = _overlapping(cfg, cat, ROOT, paths, cat.prefetch_odd("run_id"))
            assert got_bad.keys() == _reference(cfg, fake, ROOT, paths).keys()
            _, got = cat.path_tuples(("run_id", wanted - own), cat.prefetch_odd("run_id"))
            assert {r[0] for r in got} == returned
        must = {
            r[0]
            for r in rows
            if not (
                type(r[0]) is str
                and r[0] not in wanted - own
                and r[0] not in ("", ".", "..")
                and not any(ch in r[0] for ch in "/:\0")
            )
        }
        assert returned == must
        # What is left out is a plain text id no other run holds: a candidate's own row,
        # or one no candidate's path begins with.
        left_out = {r[0] for r in rows} - returned
        assert all(type(r) is str and (r in own or r not in wanted) for r in left_out)


def test_unique_column_is_a_unique_index_on_that_column_alone(tmp_path: Path) -> None:
    """Only an index that makes every row's value unique counts: not a partial one, not
    one on two columns, not a plain index, not a column without an index."""
    db = tmp_path / "catalog.db"
    c = sqlite3.connect(db)
    c.executescript(
        """
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, a, b, p, i, n, created_at INTEGER);
        CREATE UNIQUE INDEX ab ON runs(a, b);
        CREATE UNIQUE INDEX part ON runs(p) WHERE p IS NOT NULL;
        CREATE INDEX plain ON runs(i);
        CREATE UNIQUE INDEX lower_b ON runs(lower(b));
        """
    )
    c.close()
    cfg = _sqlite_config(db, "{run_id}")
    with open_catalog(cfg) as cat:
        assert cat.unique_column("run_id")
        for col in ("a", "b", "p", "i", "n"):
            assert not cat.unique_column(col), col


def test_the_shortcut_skips_runs_that_cannot_nest_and_keeps_those_that_may(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kept run beside the candidates is skipped unless its path may begin like theirs;
    the full path is computed for those only."""
    from retention import planner

    computed: list[Any] = []

    def full(cfg: Any, row: dict[str, Any], root: Path) -> bytes | None:
        computed.append(row["id"])
        return artifact_rel_path(cfg, row, root)

    monkeypatch.setattr(planner, "artifact_rel_path", full)
    cfg = _config("{x}/{y}", None)
    rows = [
        ("c1", "e1", "r1"),  # the candidate
        ("k1", "e1", "r2"),  # beside it: skipped
        ("k2", "e1", "r1"),  # the same directory
        ("k3", "e1/r1", "in"),  # inside it: "/" in a value, so the full path is computed
        ("k4", "e2", "r1"),  # elsewhere: skipped
        ("k5", "e1", ""),  # its parent, once normalised: computed
        ("k6", None, "r1"),  # NULL: computed (and refused)
    ]
    got = _overlapping(cfg, _Catalog(["id", "x", "y"], rows), ROOT, [("c1", b"e1/r1")])  # type: ignore[arg-type]
    assert got == {"c1": "artifact directory e1/r1 is also the directory of run k2, which is kept"}
    assert computed == ["k2", "k3", "k5", "k6"]
    computed.clear()
    rows = [rows[0], rows[3]]
    got = _overlapping(cfg, _Catalog(["id", "x", "y"], rows), ROOT, [("c1", b"e1/r1")])  # type: ignore[arg-type]
    assert got == {"c1": "artifact directory e1/r1 contains the directory of run k3, which is kept"}


def _template_workspace(tmp_path: Path) -> tuple[Path, list[str]]:
    """A scenario-1 workspace whose runs' directories are named by a column of their own,
    through a template, so that tests can make them shared and nested."""
    ws = ck.build(tmp_path / "ws", runs=8)
    c = sqlite3.connect(ws / "data/catalog.db")
    c.execute("ALTER TABLE runs ADD COLUMN exp TEXT")
    c.execute("UPDATE runs SET exp = run_id")
    c.commit()
    ids = [r[0] for r in c.execute("SELECT run_id FROM runs ORDER BY created_at")]
    c.close()
    (ws / "retention.toml").write_text('[artifacts]\npath_template = "{exp}"\n')
    return ws, ids


def test_shared_and_nested_directories_named_by_a_template_are_never_planned(
    tmp_path: Path,
) -> None:
    ws, ids = _template_workspace(tmp_path)
    arts = ws / "data/backtests"
    (arts / ids[6] / "inside").mkdir()
    c = sqlite3.connect(ws / "data/catalog.db")
    # ids[0] and ids[1] (both old) name one directory; ids[7] (kept) names a directory
    # inside old ids[2]'s; ids[3]'s (old) lies inside ids[6]'s (kept).
    c.execute("UPDATE runs SET exp = ? WHERE run_id = ?", (ids[0], ids[1]))
    c.execute("UPDATE runs SET exp = ? WHERE run_id = ?", (f"{ids[2]}/sub", ids[7]))
    c.execute("UPDATE runs SET exp = ? WHERE run_id = ?", (f"{ids[6]}/inside", ids[3]))
    c.commit()
    c.close()
    with ck.inside(ws):
        cfg = load_config(None, env={"RETENTION_MANIFEST_TTL": "3650d"}, overrides={"keep_last": 2})
        result = build_plan(cfg, NOW)
    planned = {e.run_id for e in result.payload.entries}
    skipped = {s.run_id: s.reason for s in result.skipped}
    assert planned == {ids[4], ids[5]}
    assert "shared by 2 runs" in skipped[ids[0]] and "shared by 2 runs" in skipped[ids[1]]
    assert f"contains the directory of run {ids[7]}, which is kept" in skipped[ids[2]]
    assert f"lies inside the directory of run {ids[6]}, which is kept" in skipped[ids[3]]
    m = ws / "m.json"
    m.write_bytes(result.manifest)
    a = ck.run(ws, "apply", str(m))
    assert a.returncode == 0, a.stderr
    assert json.loads(a.stdout)["deleted_runs"] == 2
    assert (arts / ids[0]).is_dir() and (arts / ids[6] / "inside").is_dir()


_VALUES: list[object] = [
    None, True, False, 0, 1, -1, 59, 1_600_000_000, -1_600_000_000, 10**11 - 1, 10**11,
    -(10**11), 1_700_000_000_123, 2**53 - 1, 2**53, -(2**53), 10**18, 10**30, -(10**30),
    253402300800, 253402300799, -62135596800, -62135596801, 1.5, 1e11, float("nan"),
    float("inf"), "1600000000", " 1600000000 ", "1700000000123", "2026-11-29T07:58:00Z",
    "2026-11-29T07:58:00+05:00", "2026-11-29", "", "nope", b"1600000000", b"\xff",
    datetime(2026, 1, 1), datetime(2026, 1, 1, tzinfo=UTC),
]  # fmt: skip


@pytest.mark.parametrize("fmt", ["auto", "epoch_s", "epoch_ms", "iso"])
@pytest.mark.parametrize("keep_offset", [False, True])
def test_time_reader_reads_every_value_as_parse_stored_time(fmt: str, keep_offset: bool) -> None:
    read = time_reader(fmt, keep_offset=keep_offset)
    rng = random.Random(fmt)
    values = _VALUES + [rng.randint(-(2**60), 2**60) >> rng.randint(0, 60) for _ in range(3000)]
    for value in values:
        want = parse_stored_time(value, fmt, keep_offset=keep_offset)
        got = read(value)
        assert got == want and type(got) is type(want), value
        if want is not None:
            assert got.utcoffset() == want.utcoffset() and got.tzinfo == want.tzinfo, value


def test_a_run_costs_the_garbage_collector_nothing() -> None:
    item = Item.make("r1", datetime(2026, 1, 1, tzinfo=UTC), False, None)
    verdict = Verdict(item, True, ("kept: among the newest 1",))
    assert not gc.is_tracked(item) and not gc.is_tracked(verdict)
    assert item == Item.make("r1", datetime(2026, 1, 1, tzinfo=UTC)) and hash(item)


@pytest.mark.parametrize(
    "t",
    [
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 30, 0, 999_999, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
        datetime.fromisoformat("2026-03-01T10:00:00+05:30"),
        datetime.fromisoformat("2026-03-01T10:00:00.25-00:00:30"),
        datetime.fromisoformat("2026-03-01T10:00:00+00:00"),
        datetime(2026, 3, 29, 3, 30, tzinfo=ZoneInfo("Europe/Paris")),
        datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris")),
        None,
    ],
)
def test_an_item_gives_back_the_time_it_was_made_with(t: datetime | None) -> None:
    """`Item` holds an instant as whole microseconds and the offset apart: its `time` is
    the datetime it was made from, the same instant in the same offset, at the edges of
    a datetime's range, before the epoch, with sub-minute offsets and a zone's; and the
    policy's order is the instants' (`at` compares as the datetimes do)."""
    item = Item.make("r", t)
    assert item.time == t
    if t is not None:
        assert item.time is not None and item.time.utcoffset() == t.utcoffset()
        assert item.time.replace(tzinfo=None) == t.replace(tzinfo=None)
        before = t.astimezone(UTC) - timedelta(microseconds=1) if t.year > 1 else None
        earlier = Item.make("r", before) if before is not None else None
        assert earlier is None or (earlier.at is not None and earlier.at + 1 == item.at)
    else:
        assert item.at is None


def test_measure_unchanged_walk(tmp_path: Path) -> None:
    """The candidates' fingerprints do not depend on how the plan reads the runs: two
    plans of one workspace, the second with every run's path column set, agree."""
    ws = ck.build(tmp_path / "ws", runs=6)
    first = ck.plan(ws).read_bytes()
    c = sqlite3.connect(ws / "data/catalog.db")
    c.execute("ALTER TABLE runs ADD COLUMN art TEXT")
    c.execute("UPDATE runs SET art = ? || '/' || run_id", (os.fspath(ws / "data/backtests"),))
    c.commit()
    c.close()
    (ws / "retention.toml").write_text('[artifacts]\npath_column = "art"\n')
    second = ck.plan(ws).read_bytes()

    def entries(data: bytes) -> list[tuple[str, str, int]]:
        payload = json.loads(data)["payload"]
        return [(e["run_id"], e["dir_fp"], e["bytes"]) for e in payload["entries"]]

    assert entries(first) == entries(second) and len(entries(first)) == 4


@pytest.mark.parametrize("fmt", ["auto", "epoch_s", "epoch_ms", "iso"])
def test_runs_are_read_with_the_times_parse_stored_time_gives(tmp_path: Path, fmt: str) -> None:
    """`SqlCatalog.iter_items` reads whole seconds inline: every stored value still reads
    as `parse_stored_time` reads it, with one time column and with a fallback column."""
    from retention.catalogs import open_catalog

    db = tmp_path / "catalog.db"
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at, ended_at)")
    rng = random.Random(fmt)
    values = [
        v
        for v in _VALUES
        if not isinstance(v, datetime) and not (isinstance(v, int) and abs(v) >= 2**63)
    ]
    values += [rng.randint(-(2**63), 2**63 - 1) >> rng.randint(0, 63) for _ in range(2000)]
    rows = [(f"r{k}", v, rng.choice([None, 1_600_000_000, "x"])) for k, v in enumerate(values)]
    c.executemany("INSERT INTO runs VALUES (?, ?, ?)", rows)
    c.commit()
    stored = dict(c.execute("SELECT run_id, created_at FROM runs").fetchall())
    ended = dict(c.execute("SELECT run_id, ended_at FROM runs").fetchall())
    c.close()
    for columns in (["created_at"], ["created_at", "ended_at"]):
        cfg = msgspec.structs.replace(
            load_config(None, env={}),
            catalog_path=str(db),
            time_columns=columns,
            time_format=fmt,
            path_template=None,
            child_tables=[],
        )
        with open_catalog(cfg) as cat:
            items = list(cat.iter_items())
        assert len(items) == len(rows)
        for item in items:
            value = stored[item.id]
            if value is None and len(columns) == 2:
                value = ended[item.id]
            want = parse_stored_time(value, fmt)
            assert item.time == want and type(item.time) is type(want), value


def test_the_measuring_workers_give_what_measure_gives_and_errors_come_back(
    tmp_path: Path,
) -> None:
    """plan measures the candidates' directories in forked workers (`ForkedMeasurer`) while
    it reads the catalog: each result is `LocalStore.measure`'s, in any order taken; a path
    that was not a job is measured on the spot; an error in a worker is raised by `take`
    (the caller measures what a worker did not deliver); leaving the block reaps them."""
    from retention.measuring import ForkedMeasurer
    from retention.store import LocalStore

    root = tmp_path / "arts"
    for k in range(40):
        (root / f"d{k}" / "sub").mkdir(parents=True)
        (root / f"d{k}" / "f").write_bytes(b"x" * k)
    store = LocalStore(root)
    rels = [f"d{k}".encode() for k in range(40)] + [b"absent"]
    jobs = [(k, rel) for k, rel in enumerate(rels) if k % 3]
    with ForkedMeasurer(store, jobs, workers=2, min_jobs=0) as measurer:
        assert measurer.forked == 2
        got = {k: measurer.take(k, rels[k]) for k in reversed(range(len(rels)))}
    assert got == {k: store.measure(rel) for k, rel in enumerate(rels)}
    assert not got[40].exists and got[39].bytes == 39

    class Broken(LocalStore):
        def measure(self, rel: bytes) -> Any:
            if rel == b"d5":
                raise RuntimeError("boom")
            return super().measure(rel)

    with ForkedMeasurer(Broken(root), list(enumerate(rels)), workers=2, min_jobs=0) as m:
        assert m.take(4, rels[4]) == store.measure(rels[4])
        with pytest.raises(RuntimeError, match="boom"):
            m.take(5, rels[5])
    with ForkedMeasurer(store, list(enumerate(rels)), workers=2, min_jobs=0) as measurer:
        measurer.take(0, rels[0])
        pids = [w.pid for w in measurer._workers]
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped already
    with ForkedMeasurer(store, [], min_jobs=0) as measurer:
        assert measurer.forked == 0
        assert measurer.take(0, rels[0]) == store.measure(rels[0])


def test_grouped_runs_are_read_with_their_times_and_groups(tmp_path: Path) -> None:
    """`read_items` (a policy that needs more than times) reads whole seconds inline and
    shares one `Attrs` per text group value: every run still has the time
    `parse_stored_time` gives (offsets kept, for calendar rules) and its own group value,
    whatever its type (1, 1.0, "1" and True are different groups)."""
    from retention.catalogs import open_catalog
    from retention.planner import policy_from_config, read_items

    db = tmp_path / "catalog.db"
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at, tenant)")
    rng = random.Random(7)
    times: list[object] = [
        1_600_000_000, -5, 10**11, 1_700_000_000_123, "2026-01-01T10:00:00+05:00", None, "x"
    ]  # fmt: skip
    tenants: list[object] = ["a", "b", 1, 1.0, "1", True, None, b"a", "ü"]
    rows = [(f"r{k}", rng.choice(times), rng.choice(tenants)) for k in range(3000)]
    c.executemany("INSERT INTO runs VALUES (?, ?, ?)", rows)
    c.commit()
    stored = {r[0]: r[1:] for r in c.execute("SELECT run_id, created_at, tenant FROM runs")}
    c.close()
    cfg = msgspec.structs.replace(
        load_config(None, env={}, overrides={"keep_monthly": 2, "group_by": ("tenant",)}),
        catalog_path=str(db),
        time_columns=["created_at"],
        path_template=None,
        child_tables=[],
    )
    spec = policy_from_config(cfg)
    with open_catalog(cfg) as cat:
        items = read_items(cat, cfg, spec)
    assert len(items) == len(rows)
    for item in items:
        value, tenant = stored[item.id]
        want = parse_stored_time(value, "auto", keep_offset=True)
        assert item.time == want and type(item.time) is type(want)
        if want is not None:
            assert item.time.utcoffset() == want.utcoffset()
        assert item.attrs is not None and item.attrs.group == (tenant,)
        assert type(item.attrs.group[0]) is type(tenant)


def test_row_fingerprints_are_the_digest_of_each_row_fed_in_turn(tmp_path: Path) -> None:
    """A run's row fingerprint is the digest of each of its rows' msgpack
    ``[table, [rowid, *values]]`` fed in turn (runs table first, then each child table,
    rows by rowid): pinned, so a manifest planned by an earlier version still applies and
    a faster way of computing it must give the same bytes. Runs with no child row, one,
    15, 16 and 70,000, with awkward values."""
    import hashlib

    db = tmp_path / "catalog.db"
    c = sqlite3.connect(db)
    c.executescript(
        """
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at INTEGER);
        CREATE TABLE m (id INTEGER PRIMARY KEY, run_id TEXT REFERENCES runs(run_id), v);
        CREATE TABLE p (id INTEGER PRIMARY KEY, run_id TEXT REFERENCES runs(run_id), v);
        """
    )
    counts = {"none": 0, "one": 1, "fifteen": 15, "sixteen": 16, "many": 70_000}
    values: list[Any] = [None, 1, -(2**63), 1.5, "é", "a\0b", b"\xff", 2.0**70]
    for k, (rid, n) in enumerate(counts.items()):
        c.execute("INSERT INTO runs VALUES (?, ?)", (rid, k))
        c.executemany(
            "INSERT INTO m (run_id, v) VALUES (?, ?)",
            ((rid, values[i % len(values)]) for i in range(n)),
        )
        c.execute("INSERT INTO p (run_id, v) VALUES (?, ?)", (rid, f"{k}"))
    c.commit()
    enc = msgspec.msgpack.Encoder()
    want = {}
    for rid in counts:
        h = hashlib.sha256()
        for table in ("runs", "m", "p"):
            for row in c.execute(
                f"SELECT rowid, * FROM {table} WHERE run_id = ? ORDER BY rowid", (rid,)
            ):
                h.update(enc.encode([table, list(row)]))
        want[rid] = h.hexdigest()
    c.close()
    cfg = _sqlite_config(db, "{run_id}")
    with open_catalog(cfg) as cat:
        cat.load_ids(counts)
        assert cat.fingerprints() == want


def test_loading_ids_as_one_json_array_stores_exactly_the_ids_given(tmp_path: Path) -> None:
    """The temp table of ids is filled from one JSON array when SQLite reads it back
    exactly, else row by row: either way it holds the same values, types and order (NUL
    inside text, which json_each cuts, and integers past 64 bits take the row-by-row way)."""
    from retention.catalogs.sqlite import _json_ids

    db = tmp_path / "catalog.db"
    sqlite3.connect(db).execute(
        "CREATE TABLE runs (run_id PRIMARY KEY, created_at)"
    ).connection.close()
    cfg = _sqlite_config(db, "{run_id}")
    plain: list[Any] = ["é", "\n", "\x01", "\u2028", '"', "\\", "😀", "", " ", 0, -1, 42, "42"]
    plain += [2**63 - 1, -(2**63), "x" * 5000, *(f"r{i}" for i in range(1000))]
    cases = [plain, [*plain, "a\0b"], [*plain, 2**64]]
    assert _json_ids(cases[0]) is not None
    assert _json_ids(cases[1]) is None and _json_ids(cases[2]) is None
    for ids in cases:
        with open_catalog(cfg) as cat:
            if ids[-1] == 2**64:
                with pytest.raises(OverflowError):
                    cat.load_ids(ids)  # as before: no 64-bit integer, no run id
                continue
            cat.load_ids(ids)
            got = cat.conn.execute(
                f"SELECT id, typeof(id) FROM {cat.IDS_TABLE} ORDER BY n"
            ).fetchall()
        assert [v for v, _ in got] == ids
        assert [t for _, t in got] == ["integer" if type(i) is int else "text" for i in ids]


def test_prefetched_odd_rows_are_used_only_for_their_own_column_and_when_read(
    tmp_path: Path,
) -> None:
    """`OddRows` handed to `path_tuples` for another column, or whose read failed, change
    nothing: the catalog reads the rows itself. A plan with a one-field template starts the
    prefetch (`_prefetch_odd`); other path settings do not."""
    db = tmp_path / "catalog.db"
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at INTEGER, x TEXT)")
    c.executemany(
        "INSERT INTO runs VALUES (?, 0, ?)",
        [("a", "p"), ("b/c", "q"), ("d", "e/f"), ("", "g"), ("h", "")],
    )
    c.commit()
    c.close()
    cfg = _sqlite_config(db, "{run_id}")
    with open_catalog(cfg) as cat:
        _, rows = cat.path_tuples(("run_id", {"a"}))
        expected = sorted(rows)
        assert expected == [("",), ("a",), ("b/c",)]

        def broken() -> list[tuple[Any, ...]]:
            raise sqlite3.OperationalError("database is locked")

        failed = OddRows("run_id", ["run_id"], broken, sqlite3.Error)
        assert failed.rows("run_id", ["run_id"]) is None
        other = OddRows("x", ["run_id"], lambda: [("only this",)], sqlite3.Error)
        for odd in (failed, other, cat.prefetch_odd("run_id")):
            _, rows = cat.path_tuples(("run_id", {"a"}), odd)
            assert sorted(rows) == expected
        assert cat.prefetch_odd("created_at") is None  # not a path column
        # Beyond ODD_ROWS_MAX odd rows (integer ids are never plain names to this test, nor
        # are these) the thread keeps none: they would all be in memory at once; the
        # catalog streams them later instead.
        c = sqlite3.connect(db)
        c.executemany(
            "INSERT INTO runs VALUES (?, 0, 'p')", ((f"n/{i}",) for i in range(ODD_ROWS_MAX))
        )
        c.commit()
        c.close()
        many = cat.prefetch_odd("run_id")
        assert many is not None and many.rows("run_id", ["run_id"]) is None
        _, rows = cat.path_tuples(("run_id", {"a"}), many)
        assert len(list(rows)) == ODD_ROWS_MAX + 3
        assert _prefetch_odd(cfg, cat) is not None
        for template in ("exp/{run_id}", "{run_id}-x", "{run_id:>4}"):
            assert _prefetch_odd(_sqlite_config(db, template), cat) is None
