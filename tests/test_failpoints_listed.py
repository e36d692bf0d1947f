"""Failpoint names are stable strings listed once: every call site names a declared point,
and every declared point has a call site."""

import re
from pathlib import Path

import retention.failpoints as rfp
from journal import failpoints as jfp

ROOT = Path(__file__).resolve().parent.parent
CALL = re.compile(r"""failpoint\(\s*["']([a-z_.]+)["']\s*\)""")


def call_sites() -> set[str]:
    names = set()
    for pkg in ("retention", "journal"):
        for path in (ROOT / pkg).rglob("*.py"):
            names |= set(CALL.findall(path.read_text()))
    return names


def test_every_call_site_is_declared() -> None:
    assert call_sites() <= jfp.declared()


def test_every_declared_point_has_a_call_site() -> None:
    declared = set(rfp.ALL) | set(jfp.JOURNAL_FAILPOINTS)
    assert declared == call_sites()
