"""A generic write-ahead journal: record framing, fsync helpers, replay, failpoints.

This package knows nothing about runs, policies or SQLite schemas and never imports
`retention`.
"""
