"""Pieces shared by the JSON reports of several commands (each report has its own version)."""

from __future__ import annotations

import msgspec


class SkippedEntry(msgspec.Struct):
    """A run left out (of a plan, or of an apply), why, and what to do about it."""

    run_id: str | int
    reason: str
    hint: str | None = None
