"""The retention policy: a pure function of runs, a policy and ``now`` (no I/O, no clock).

`evaluate` (in `retention.policy.core`) decides; `PolicySpec` (`retention.policy.spec`) is
what to keep; the rules are in `retention.policy.rules`, calendar periods and spans in
`retention.policy.calendar`, the size budget in `retention.policy.budget`.
"""

from retention.policy.budget import BudgetReport, Held
from retention.policy.core import (
    Attrs,
    Decision,
    DependencyCycle,
    GroupSummary,
    Item,
    RunId,
    Verdict,
    evaluate,
    group_label,
    other_type,
    sort_key,
)
from retention.policy.spec import UNITS, UNLIMITED, PolicySpec

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
