"""retention: delete old runs (catalog rows plus artifact directories) safely."""

__version__ = "0.1.0"
