"""Shell completion helpers (click's ``_RETENTION_COMPLETE=bash_source retention``).

`complete_txids` completes ``retention undo TXID`` with the applies of the workspace that
can still be undone. Completion runs on every Tab: it is read-only (the catalog opened
``mode=ro``, the journal not touched) and never fails: anything that goes wrong (no
config, no catalog, a locked or damaged one) completes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import click

# Imported by the CLI for every command (the callback is named in ``undo``'s argument):
# what completing needs is imported when a Tab asks for it.


def complete_txids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """The txids of the applies still in trash (undoable), newest first, with when each was
    applied, its runs in trash and its undo deadline as help text (zsh and fish show it)."""
    from click.shell_completion import CompletionItem

    from retention.durations import plural

    try:
        from retention.catalogs import open_catalog
        from retention.config import load_config

        root = ctx.find_root()
        explicit = (ctx.obj or {}).get("config") or root.params.get("config_path")
        overrides = dict(ctx.meta.get("retention.paths", {}))
        cfg = load_config(explicit, overrides=overrides)
        with open_catalog(cfg) as cat:
            rows = cat.applies()
            left = cat.trash_by_apply()
    except Exception:  # completion must never print a traceback into the shell
        return []
    items = []
    for row in rows:
        txid = str(row["txid"])
        if row["state"] != "applied" or not txid.startswith(incomplete):
            continue
        runs = left.get(txid, (0, 0))[0]
        until = row.get("grace_until") or "?"
        help_text = (
            f"applied {row['created_at']}, {plural(runs, 'run')} in trash, undo until {until}"
        )
        items.append(CompletionItem(txid, help=help_text))
    return items
