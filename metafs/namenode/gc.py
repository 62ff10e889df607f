"""Garbage collection of blocks nothing references.

Two kinds of garbage:

- blocks the metadata let go of (overwritten chunks, truncated tails, freed files): they
  are on the ``block_garbage`` list with the time they were freed, and are removed once
  that is older than the grace period (a reader holding an older layout has that long);
- orphans: blocks in the store the metadata never referenced (uploads of a client killed
  before its commit, temporary files of interrupted puts): found by listing the store,
  removed once they are older than the grace period.

Why an orphan cannot be referenced after it is removed: CommitBlocks refuses blocks stored
more than half the grace period ago, and the references are read *after* the listing, so a
block old enough to be removed here was either committed before that read (and is seen as
referenced) or can no longer be committed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .blocks import BlockLayer
    from .namespace import Namespace

log = logging.getLogger("metafs.namenode.gc")


@dataclass
class GcStats:
    """What one collection found and did."""

    freed_deleted: int = 0      # blocks from the garbage list removed
    orphans_deleted: int = 0    # never-referenced blocks removed
    orphans_kept: int = 0       # unreferenced but younger than the grace period
    referenced: int = 0         # blocks in the store that files use
    scanned: int = 0            # blocks listed
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def deleted(self) -> int:
        return self.freed_deleted + self.orphans_deleted


def gc(target: "BlockLayer | Namespace", *, grace: float | None = None,
       now: float | None = None, dry_run: bool = False, scan: bool = True) -> GcStats:
    """Remove unreferenced blocks older than ``grace`` seconds (default ``gc_grace``).

    ``target`` is a namespace's block layer (or the namespace). ``now`` (seconds since the
    epoch) is for tests that must not wait out a grace period. ``scan=False`` skips the
    listing of the store and only empties the garbage list."""
    layer = getattr(target, "blocks", target)
    store = layer.store
    grace = layer.settings.gc_grace if grace is None else grace
    t0 = time.monotonic()
    now = time.time() if now is None else now
    cutoff = now - grace
    stats = GcStats(dry_run=dry_run)

    # 1. the garbage list
    while True:
        due = layer.garbage_due(int(cutoff * 1e9))
        if not due:
            break
        # Never delete a key that is referenced again (cannot happen through CommitBlocks,
        # which refuses freed keys; checked anyway because deleting data is final).
        live = layer.is_referenced(due)
        dead = [k for k in due if k not in live]
        if not dry_run:
            store.delete_many(dead)
            layer.forget_garbage(due)
        stats.freed_deleted += len(dead)
        if dry_run or len(due) < 10_000:
            break

    # 2. orphans
    if scan:
        listing = list(store.list())
        stats.scanned = len(listing)
        known = layer.known_keys()  # read after the listing: see the module's docstring
        orphans = []
        for info in listing:
            if info.key in known:
                stats.referenced += 1
            elif info.mtime < cutoff:
                orphans.append(info.key)
            else:
                stats.orphans_kept += 1
        if orphans and not dry_run:
            live = layer.is_referenced(orphans)  # belt and braces
            orphans = [k for k in orphans if k not in live]
            store.delete_many(orphans)
        stats.orphans_deleted = len(orphans)
    stats.seconds = time.monotonic() - t0
    if stats.deleted:
        log.info("removed %d freed and %d orphaned blocks", stats.freed_deleted,
                 stats.orphans_deleted)
    return stats


def add_gc_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a collection (``--db``, ``--blocks``, ``--grace``, ``--dry-run``,
    ``--no-scan``, ``--json``), for :func:`run_gc`."""
    p.add_argument("--db", dest="db_url", help="metadata database URL")
    p.add_argument("--blocks", dest="blocks_url", help="block store URL")
    p.add_argument("--grace", type=float, help="seconds to keep unreferenced blocks "
                   "(default: the gc_grace setting)")
    p.add_argument("--dry-run", action="store_true", help="report, remove nothing")
    p.add_argument("--no-scan", action="store_true",
                   help="only the garbage list; do not list the store for orphans")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def gc_main(args: Sequence[str] | None = None) -> int:
    """``metafs gc``: collect garbage in the block store of a metafs file system."""
    p = argparse.ArgumentParser(prog="metafs gc", description=(
        "Remove blocks no file references (overwritten, deleted, or uploaded by a client "
        "that died before committing) once they are older than the grace period."))
    p.add_argument("--config", help="config file (TOML)")
    p.add_argument("--data-dir", help="embedded file system directory")
    add_gc_arguments(p)
    return run_gc(p.parse_args(list(sys.argv[1:] if args is None else args)))


def run_gc(ns_args: argparse.Namespace) -> int:
    """Collect with the options of :func:`add_gc_arguments` (and ``config``, ``data_dir``),
    on the metadata database directly; print what was done."""
    from .. import config
    from .engine import engine_for
    from .namespace import Namespace

    settings = config.load(ns_args.config, overrides={
        "data_dir": ns_args.data_dir, "db_url": ns_args.db_url,
        "blocks_url": ns_args.blocks_url})
    engine = engine_for(settings.existing_db_url(), settings)
    try:
        ns = Namespace(engine, settings)
        ns.setup()
        stats = gc(ns, grace=ns_args.grace, dry_run=ns_args.dry_run, scan=not ns_args.no_scan)
    finally:
        engine.dispose()
    if ns_args.json:
        print(json.dumps(asdict(stats)))
    else:
        verb = "would remove" if stats.dry_run else "removed"
        print(f"{verb} {stats.freed_deleted} freed and {stats.orphans_deleted} orphaned "
              f"blocks; {stats.referenced} referenced, {stats.orphans_kept} unreferenced "
              f"within the grace period ({stats.scanned} listed, {stats.seconds:.2f}s)")
    return 0
