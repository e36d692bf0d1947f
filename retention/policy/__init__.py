"""The retention policy: a pure function of runs, a policy and ``now`` (no I/O, no clock).

`evaluate` (in `retention.policy.core`) decides; `PolicySpec` (`retention.policy.spec`) is
what to keep; the rules are in `retention.policy.rules`, calendar periods and spans in
`retention.policy.calendar`, the size budget in `retention.policy.budget`.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retention.policy.budget import BudgetReport, Held
    from retention.policy.core import (
        Attrs,
        Decision,
        DependencyCycle,
        GroupSummary,
        Item,
        Verdict,
        evaluate,
        group_label,
        other_type,
        sort_key,
    )
    from retention.policy.spec import UNITS, UNLIMITED, PolicySpec

from retention.policy.ids import RunId

# Loaded on first use (as `journal`'s names): a module that only names a run id, or a
# read-only command, does not pay for the policy engine's imports.
_LAZY = {
    "BudgetReport": "retention.policy.budget",
    "Held": "retention.policy.budget",
    **{
        name: "retention.policy.core"
        for name in (
            "Attrs",
            "Decision",
            "DependencyCycle",
            "GroupSummary",
            "Item",
            "Verdict",
            "evaluate",
            "group_label",
            "other_type",
            "sort_key",
        )
    },
    **{name: "retention.policy.spec" for name in ("UNITS", "UNLIMITED", "PolicySpec")},
}


def __getattr__(name: str) -> Any:
    # A name of `_LAZY`: its module is imported and the name cached here. Anything else
    # (a submodule not imported yet) is an AttributeError: the import system finds it.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "UNITS",
    "UNLIMITED",
    "Attrs",
    "BudgetReport",
    "Decision",
    "DependencyCycle",
    "GroupSummary",
    "Held",
    "Item",
    "PolicySpec",
    "RunId",
    "Verdict",
    "evaluate",
    "group_label",
    "other_type",
    "sort_key",
]
