"""Named crash points for crash testing, inert unless armed through the environment.

Contract:

* `declare(*names)` registers names (each package declares its own once, at import).
* `failpoint(name)` raises `ValueError` for an undeclared name (a programming error, so a
  typo never silently disables a crash test). Otherwise it counts the hit, appends
  ``name\\n`` to the file named by ``FAILPOINT_LOG`` if set, and if ``FAILPOINT`` is
  ``name`` or ``name@N`` and this is hit number N (1-based, default 1) it calls
  ``os._exit(FAILPOINT_EXIT_CODE)`` at once: no flush, no atexit, no finally blocks, which is
  the closest a test can get to a power cut without a VM.
* The environment is read at every call, so tests may change it between calls.
* ``FAILPOINT_PAUSE=name[@N]`` with ``FAILPOINT_PAUSE_DIR=DIR`` pauses instead of exiting:
  the process creates ``DIR/paused`` and waits (up to 120 s) until ``DIR/resume`` exists,
  so a test can act at exactly that step (take a lock another process will meet, say).
"""

from __future__ import annotations

import os
import time
from collections import Counter

FAILPOINT_EXIT_CODE = 86

JOURNAL_FAILPOINTS: tuple[str, ...] = (
    "journal.append.before_write",
    "journal.append.before_fsync",
    "journal.append.after_fsync",
    "journal.truncate.before_fsync",
    "journal.reset.before_rename",
)

_declared: set[str] = set()
_hits: Counter[str] = Counter()


def declare(*names: str) -> None:
    """Add `names` to the registry. Idempotent. Raises `ValueError` on an empty or
    ``@``-containing name (``@`` separates the hit number in ``FAILPOINT``)."""
    for name in names:
        if not name or "@" in name:
            raise ValueError(f"invalid failpoint name {name!r}")
    _declared.update(names)


def declared() -> frozenset[str]:
    """Every declared failpoint name."""
    return frozenset(_declared)


def _parse_armed(spec: str) -> tuple[str, int]:
    name, sep, count = spec.partition("@")
    if not sep:
        return name, 1
    try:
        n = int(count)
    except ValueError:
        raise ValueError(f"FAILPOINT={spec!r}: hit number must be an integer") from None
    if n < 1:
        raise ValueError(f"FAILPOINT={spec!r}: hit number is 1-based")
    return name, n


_ARMING = ("FAILPOINT_LOG", "FAILPOINT", "FAILPOINT_PAUSE")
_ARMING_KEYS = tuple(os.fsencode(k) for k in _ARMING)


def _maybe_armed() -> bool:
    """Whether any of ``FAILPOINT_LOG``, ``FAILPOINT``, ``FAILPOINT_PAUSE`` is in the
    environment now. The common case (none is) costs three lookups in ``os.environ``'s own
    dict of encoded names: the public lookups (``os.environ.get``, 2 us each: they encode
    the name and decode the value) were a tenth of an apply's rename loop, which passes a
    failpoint after every rename. Still read at every call: a test may change the
    environment between calls (``os.environ`` updates that dict in place)."""
    data = getattr(os.environ, "_data", None)
    if type(data) is not dict:  # not CPython's POSIX os.environ: the public way
        return any(k in os.environ for k in _ARMING)
    log, spec, pause = _ARMING_KEYS
    return log in data or spec in data or pause in data


def failpoint(name: str) -> None:
    """Count a hit of `name`; log it; exit the process with code 86 if armed for this hit.

    Raises `ValueError` if `name` was never declared, or if ``FAILPOINT`` is malformed.
    Returns normally otherwise (always, when nothing is armed).
    """
    if name not in _declared:
        raise ValueError(f"undeclared failpoint {name!r}")
    _hits[name] += 1
    if not _maybe_armed():
        return
    log = os.environ.get("FAILPOINT_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(name + "\n")
    spec = os.environ.get("FAILPOINT")
    if spec:
        armed, nth = _parse_armed(spec)
        if armed == name and _hits[name] == nth:
            os._exit(FAILPOINT_EXIT_CODE)
    pause = os.environ.get("FAILPOINT_PAUSE")
    if pause:
        armed, nth = _parse_armed(pause)
        if armed == name and _hits[name] == nth:
            _pause(os.environ["FAILPOINT_PAUSE_DIR"])


def _pause(directory: str) -> None:
    with open(os.path.join(directory, "paused"), "w", encoding="utf-8"):
        pass
    resume = os.path.join(directory, "resume")
    deadline = time.monotonic() + 120
    while not os.path.exists(resume) and time.monotonic() < deadline:
        time.sleep(0.01)


def hits() -> dict[str, int]:
    """A copy of the per-process hit counters."""
    return dict(_hits)


def reset_hits() -> None:
    """Zero every hit counter (declarations are kept)."""
    _hits.clear()


declare(*JOURNAL_FAILPOINTS)
