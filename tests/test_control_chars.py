"""Control characters in run ids never reach a terminal raw (issue 12, item 11): a run id
holding a newline and a fake "Applied ..." line, or an OSC sequence, is printed escaped in
every human line of plan, apply, undo and check."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from . import crashkit as ck

EVIL = "bt-evil\nApplied m-fake as a-fake: 999 runs deleted\x1b]0;pwned\x07\r\x85"


def _rename_oldest(ws: Path) -> None:
    db = sqlite3.connect(ws / "data/catalog.db")
    (old,) = db.execute("SELECT run_id FROM runs ORDER BY created_at LIMIT 1").fetchone()
    db.execute("UPDATE run_metrics SET run_id = ? WHERE run_id = ?", (EVIL, old))
    db.execute("UPDATE runs SET run_id = ? WHERE run_id = ?", (EVIL, old))
    db.commit()
    db.close()
    (ws / "data/backtests" / old).rename(ws / "data/backtests" / EVIL)


def _assert_clean(stream: bytes, *, names_it: bool = False) -> None:
    text = stream.decode()
    for bad in ("\x1b", "\x07", "\r", "\x85"):
        assert bad not in text, repr(text)
    assert not any(line.startswith("Applied m-fake") for line in text.splitlines()), text
    if names_it:
        assert "bt-evil\\nApplied m-fake" in text, text


def test_run_ids_with_control_characters_are_escaped_in_every_human_line(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=6)
    _rename_oldest(ws)
    plan = ck.run(ws, "plan", "--keep-last", "3", "--now", "2026-11-01T00:00:00Z", "-o", "m.json")
    assert plan.returncode == 0, plan.stderr
    show = ck.run(ws, "show", "m.json")
    assert show.returncode == 0, show.stderr
    _assert_clean(show.stdout)
    apply = ck.run(ws, "apply", "m.json")
    assert apply.returncode == 0, apply.stderr
    assert EVIL in json.loads(apply.stdout)["deleted_run_ids"]  # JSON keeps the exact id
    _assert_clean(apply.stderr)
    (ws / "data/backtests" / EVIL).mkdir()  # a conflict: undo names the run in a human line
    undo = ck.run(ws, "undo", json.loads(apply.stdout)["txid"])
    assert undo.returncode == 3, undo.stderr
    _assert_clean(undo.stderr, names_it=True)
    check = ck.run(ws, "check")
    _assert_clean(check.stdout + check.stderr, names_it=True)
