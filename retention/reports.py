"""Pieces shared by the JSON reports of several commands (each report has its own version)."""

from __future__ import annotations

import msgspec


class SkippedEntry(msgspec.Struct):
    """A run left out (of a plan, or of an apply), why, and what to do about it."""

    run_id: str | int
    reason: str
    hint: str | None = None


class LockHolder(msgspec.Struct, kw_only=True):
    """The process that holds (or, after a crash, last held) the workspace lock, from
    ``lock.owner``; any field may be unknown (None)."""

    pid: int | None = None
    host: str | None = None
    command: str | None = None
    since: str | None = None  # ISO-8601, when it took the lock


class Interruption(msgspec.Struct, kw_only=True):
    """A SIGINT or SIGTERM that stopped a command at a safe point after its commit: the
    work was finished (rolled forward) and the command exits with ``exit_code``."""

    signal: str  # SIGINT | SIGTERM
    exit_code: int  # 130 | 143
    message: str  # what happened, for people
