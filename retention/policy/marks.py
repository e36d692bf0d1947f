"""Why a run is kept, as bits: two bytes per run (`retention.policy.core` sets them, the
budget reads them). Reasons are the text; these are what code decides on."""

PROTECTED = 1  # catalog.protect
PINNED = 2  # the pin column
NOT_TERMINAL = 4  # outside the terminal states: not counted, never removed
NEWEST_KIND = 8  # the newest run of a configured kind
FLOOR = 16  # kept by min-keep
DEPENDED_ON = 32  # a kept run depends on it (transitively)
RULE = 64  # some rule keeps it
CHECKPOINT = 128  # a calendar rule keeps it
UNRULED = 256  # its group's tier has no policy: kept whole

GUARDS = (
    PROTECTED | PINNED | NOT_TERMINAL | NEWEST_KIND | FLOOR | UNRULED
)  # the budget never removes these
