"""A run's id, as the catalog stores it: its own module, so that the modules that only
name it (the participants, the journal's moves, the catalogs) do not load the policy
engine (start-up time of the read-only commands, issue 13)."""

RunId = str | int
