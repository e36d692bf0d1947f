"""The SQLite catalog loads its temporary table of run ids in one savepoint (issue 13):
the same table, whether or not a transaction is open, and never a transaction left open.

* a second load replaces the first (the ids, their order ``n``), and neither leaves a
  transaction open on the connection (a plan's read-only one, an apply's writable one);
* inside the commit's transaction a load nests: the transaction stays open, and its
  rollback takes the writes of the load with it as well;
* a load that fails half-way rolls back what it inserted and leaves no transaction open:
  the next ``BEGIN IMMEDIATE`` (apply's commit) can start.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from retention.catalogs import open_catalog
from retention.config import load_config


def _ids(cat: object) -> list[tuple[int, object]]:
    conn = cat.conn  # type: ignore[attr-defined]
    return [tuple(r) for r in conn.execute("SELECT n, id FROM temp._retention_ids ORDER BY n")]


@pytest.mark.parametrize("readonly", [True, False])
def test_a_second_load_replaces_the_first_and_no_transaction_stays_open(
    workspace: Path, readonly: bool
) -> None:
    with open_catalog(load_config(), readonly=readonly) as cat:
        cat.load_ids(["r1", "r2", "r2", "r3"])
        assert _ids(cat) == [(1, "r1"), (2, "r2"), (3, "r3")]
        assert not cat.conn.in_transaction
        cat.load_ids(["r9", "r1"])
        assert _ids(cat) == [(1, "r9"), (2, "r1")]
        assert not cat.conn.in_transaction


def test_a_load_inside_a_transaction_nests_and_rolls_back_with_it(workspace: Path) -> None:
    with open_catalog(load_config(), readonly=False) as cat:
        cat.load_ids(["a"])
        cat.conn.execute("BEGIN IMMEDIATE")
        cat.load_ids(["b", "c"])
        assert cat.conn.in_transaction
        assert _ids(cat) == [(1, "b"), (2, "c")]
        cat.conn.execute("ROLLBACK")
        assert _ids(cat) == [(1, "a")]


def test_a_failed_load_leaves_no_transaction_and_the_commit_can_begin(workspace: Path) -> None:
    with open_catalog(load_config(), readonly=False) as cat:
        with pytest.raises(Exception):  # noqa: B017 - the driver's own error for an object
            cat.load_ids(["x", object(), "y"])  # type: ignore[list-item]
        assert not cat.conn.in_transaction
        assert _ids(cat) == []  # "x" went with the savepoint
        cat.conn.execute("BEGIN IMMEDIATE")
        cat.conn.execute("ROLLBACK")
