"""``metafs fsck``: check the metadata invariants (docs/design.md) on a live metadata database,
report what is wrong, and with ``repair`` fix what can be fixed.

Checks (each finding has a ``kind``):

- ``root``: the root inode exists and is a directory;
- ``dangling-dentry``: a directory entry names an inode that does not exist, or sits in a
  parent that is not a directory (repair: the entry is removed);
- ``dentry-type``: an entry's cached type bits differ from its inode's (repair: fixed);
- ``dir-multiple-parents``: a directory is named by more than one entry (repair: the
  entries that are not on the path from the root are removed);
- ``unreachable`` / ``cycle``: an inode with links that cannot be reached from the root,
  which includes directories that are their own ancestors (repair: moved into
  ``/lost+found`` under the name ``#INO``, which also breaks the cycle);
- ``nlink``: a file's link count differs from its entries, or a directory's from
  2 + its subdirectories (repair: set to the counted value);
- ``orphan-data``: inline data, xattrs or block mappings of an inode that does not exist
  (repair: removed; orphan blocks go to the garbage list for GC);
- ``inline-size``: a file's inline data is longer than its size (reported);
- ``changelog-gap``: changelog positions are not contiguous, or the head counter is behind
  the last record (reported; a gap means a consumer may have skipped changes: rebuild
  consumers with ``metafs indexer --rebuild``);
- ``missing-block``: a block referenced by metadata is not in the block store (reported:
  the file's data is lost; with ``check_blocks``).

Run it on a quiet namespace (or accept that changes made during the run show up as
transient findings); repairs are each one transaction.
"""

from __future__ import annotations

import stat
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, insert, inspect, select, update
from sqlalchemy.engine import Connection

from ..namenode import schema

I, D, FD, XA, CL, C = (schema.inodes, schema.dentries, schema.file_data, schema.xattrs,
                       schema.changelog, schema.counters)
ROOT = schema.ROOT_INO
LOST_FOUND = "lost+found"


@dataclass
class Finding:
    kind: str
    message: str
    ino: int = 0
    repaired: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ino": self.ino, "message": self.message,
                "repaired": self.repaired}


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return all(f.repaired for f in self.findings)

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def to_dict(self) -> dict[str, Any]:
        return {"clean": not self.findings, "stats": self.stats,
                "findings": [f.to_dict() for f in self.findings]}


def _has_table(conn: Connection, name: str) -> bool:
    return inspect(conn).has_table(name)


def fsck(engine: Any, *, repair: bool = False, store: Any = None) -> Report:
    """Check (and with ``repair`` fix) the metadata database behind ``engine`` (a
    MetaEngine). ``store``: a BlockStore to verify referenced blocks exist in."""
    rep = Report()
    if repair:
        engine.write(lambda conn: _run(conn, rep, True, store, engine))
    else:
        engine.read(lambda conn: _run(conn, rep, False, store, engine))
    return rep


def _run(conn: Connection, rep: Report, repair: bool, store: Any, engine: Any) -> None:
    inodes = {r.id: r for r in conn.execute(select(I.c.id, I.c.mode, I.c.nlink, I.c.size,
                                                   I.c.storage)).all()}
    dentries = conn.execute(select(D.c.parent, D.c.name, D.c.ino, D.c.mode)).all()
    open_inos = set(conn.execute(select(schema.handles.c.ino)).scalars().all())
    rep.stats.update(inodes=len(inodes), dentries=len(dentries))

    def add(kind: str, msg: str, ino: int = 0, fixed: bool = False) -> None:
        rep.findings.append(Finding(kind, msg, ino, fixed and repair))

    # -- root
    root = inodes.get(ROOT)
    if root is None or not stat.S_ISDIR(root.mode):
        add("root", "the root inode is missing or not a directory", ROOT)
        return  # nothing else can be judged

    # -- entries pointing nowhere, or out of non-directories
    good: list[Any] = []
    for d in dentries:
        target, parent = inodes.get(d.ino), inodes.get(d.parent)
        if target is None or parent is None or not stat.S_ISDIR(parent.mode):
            why = "a missing inode" if target is None else "a parent that is not a directory"
            add("dangling-dentry", f"entry {d.name!r} in {d.parent} points at {d.ino}: {why}",
                d.ino, True)
            if repair:
                conn.execute(delete(D).where(D.c.parent == d.parent, D.c.name == d.name))
            continue
        if stat.S_IFMT(d.mode) != stat.S_IFMT(target.mode):
            add("dentry-type", f"entry {d.name!r} in {d.parent} caches type "
                f"{stat.S_IFMT(d.mode):o}, inode {d.ino} is {stat.S_IFMT(target.mode):o}",
                d.ino, True)
            if repair:
                conn.execute(update(D).where(D.c.parent == d.parent, D.c.name == d.name)
                             .values(mode=stat.S_IFMT(target.mode)))
        good.append(d)

    # -- reachability from the root (breadth first over directories)
    children: dict[int, list[Any]] = defaultdict(list)
    for d in good:
        children[d.parent].append(d)
    reached = {ROOT}
    tree_parent: dict[int, int] = {}
    frontier = [ROOT]
    while frontier:
        nxt = []
        for p in frontier:
            for d in children.get(p, ()):
                if d.ino in reached:
                    continue
                reached.add(d.ino)
                tree_parent[d.ino] = p
                if stat.S_ISDIR(inodes[d.ino].mode):
                    nxt.append(d.ino)
        frontier = nxt

    # -- directories named more than once (a directory hard link makes cycles possible)
    by_ino: dict[int, list[Any]] = defaultdict(list)
    for d in good:
        by_ino[d.ino].append(d)
    removed: set[tuple[int, str]] = set()
    for ino, ents in by_ino.items():
        if ino == ROOT or not stat.S_ISDIR(inodes[ino].mode) or len(ents) < 2:
            continue
        keep = tree_parent.get(ino)
        extra = [e for e in ents if e.parent != keep] if keep is not None else ents[1:]
        add("dir-multiple-parents", f"directory {ino} is named by {len(ents)} entries", ino,
            True)
        for e in extra:
            removed.add((e.parent, e.name))
            if repair:
                conn.execute(delete(D).where(D.c.parent == e.parent, D.c.name == e.name))
    for ino in [i for i, e in by_ino.items() if i == ROOT]:
        add("cycle", "the root directory is named by an entry", ROOT, True)
        for e in by_ino[ino]:
            removed.add((e.parent, e.name))
            if repair:
                conn.execute(delete(D).where(D.c.parent == e.parent, D.c.name == e.name))
    good = [d for d in good if (d.parent, d.name) not in removed]

    # -- unreachable inodes (detached subtrees, directory cycles)
    unreachable = [i for i, r in inodes.items() if i not in reached and
                   (r.nlink > 0 or i in by_ino) and not (r.nlink == 0 and i in open_inos)]
    # report the top of each detached piece: an inode whose parents are all unreachable
    # directories is covered by its top, unless it is in a cycle
    lost_found = None
    if unreachable and repair:
        lost_found = _lost_found(conn, engine, inodes, children)
    tops = []
    for i in unreachable:
        parents = [d.parent for d in by_ino.get(i, ())]
        if parents and all(p in inodes and p not in reached for p in parents):
            if _in_cycle(i, by_ino, inodes):
                tops.append((i, "cycle"))
            continue
        tops.append((i, "unreachable"))
    seen_cycles: set[int] = set()
    for i, kind in tops:
        if kind == "cycle":
            members = _cycle_members(i, by_ino)
            if members & seen_cycles:
                continue
            seen_cycles |= members
            i = min(members)
        add(kind, f"inode {i} ({'directory' if stat.S_ISDIR(inodes[i].mode) else 'file'}) "
            "cannot be reached from the root" + (" (its directory is its own ancestor)"
                                                   if kind == "cycle" else ""), i, True)
        if repair and lost_found is not None:
            if kind == "cycle" or stat.S_ISDIR(inodes[i].mode):
                conn.execute(delete(D).where(D.c.ino == i))  # break the loop
            conn.execute(insert(D).values(parent=lost_found, name=f"#{i}", ino=i,
                                          mode=stat.S_IFMT(inodes[i].mode)))

    # -- link counts, recounted from the (possibly repaired) entries
    final = conn.execute(select(D.c.parent, D.c.ino, D.c.mode)).all() if repair else good
    links: dict[int, int] = defaultdict(int)
    subdirs: dict[int, int] = defaultdict(int)
    for d in final:
        links[d.ino] += 1
        if stat.S_ISDIR(d.mode):
            subdirs[d.parent] += 1
    if repair:  # count again over what the repairs left (and lost+found)
        inodes = {r.id: r for r in conn.execute(select(I.c.id, I.c.mode, I.c.nlink,
                                                       I.c.size, I.c.storage)).all()}
    for i, r in inodes.items():
        if r.nlink == 0 and links[i] == 0:
            continue  # unlinked, kept for open handles (or being reclaimed)
        want = (2 + subdirs[i]) if stat.S_ISDIR(r.mode) else links[i]
        if want == 0 and i in open_inos:
            want = 0
        cur = r.nlink
        if cur != want:
            add("nlink", f"inode {i} has nlink {cur}, its entries make {want}", i, True)
            if repair:
                conn.execute(update(I).where(I.c.id == i).values(nlink=want))

    # -- rows of inodes that do not exist
    for table, what in ((FD, "inline data"), (XA, "xattr")):
        orphans = sorted(set(conn.execute(select(table.c.ino).where(
            ~table.c.ino.in_(select(I.c.id)))).scalars().all()))
        for i in orphans:
            add("orphan-data", f"{what} of missing inode {i}", i, True)
        if repair and orphans:
            conn.execute(delete(table).where(table.c.ino.in_(orphans)))
    for row in conn.execute(select(FD.c.ino, func.length(FD.c.data).label("n"))).all():
        r = inodes.get(row.ino)
        if r is not None and row.n > r.size:
            add("inline-size", f"inode {row.ino} holds {row.n} bytes inline but its size is "
                f"{r.size}", row.ino)

    has_blocks = _has_table(conn, "blocks")
    if has_blocks:
        B = schema.blocks
        orphan_blocks = conn.execute(select(B.c.ino, B.c.key).where(
            ~B.c.ino.in_(select(I.c.id)))).all()
        for b in orphan_blocks:
            add("orphan-data", f"block {b.key} mapped to missing inode {b.ino}", b.ino, True)
        if repair and orphan_blocks:
            now = time.time_ns()
            conn.execute(delete(B).where(B.c.key.in_([b.key for b in orphan_blocks])))
            if _has_table(conn, "block_garbage"):
                conn.execute(insert(schema.block_garbage),
                             [{"key": b.key, "freed_ns": now} for b in orphan_blocks])
        if store is not None:
            n = 0
            for b in conn.execute(select(B.c.ino, B.c.key)).all():
                n += 1
                if not store.exists(b.key):
                    add("missing-block", f"block {b.key} of inode {b.ino} is not in the "
                        "block store", b.ino)
            rep.stats["blocks_checked"] = n

    # -- the changelog: contiguous positions up to the head counter
    lo, hi, count = conn.execute(select(func.min(CL.c.seq), func.max(CL.c.seq),
                                        func.count())).one()
    head = conn.execute(select(C.c.value).where(C.c.name == "changelog")).scalar() or 0
    rep.stats.update(changelog_records=int(count or 0), changelog_head=int(head))
    if count:
        if hi - lo + 1 != count:
            seqs = conn.execute(select(CL.c.seq).order_by(CL.c.seq)).scalars().all()
            prev = seqs[0]
            gaps = []
            for s in seqs[1:]:
                if s != prev + 1:
                    gaps.append((prev + 1, s - 1))
                prev = s
            shown = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in gaps[:10])
            add("changelog-gap", f"changelog positions missing: {shown}"
                + (f" and {len(gaps) - 10} more gaps" if len(gaps) > 10 else ""))
        if hi > head:
            add("changelog-gap", f"changelog head counter {head} is behind the last record "
                f"{hi}", 0, True)
            if repair:
                conn.execute(update(C).where(C.c.name == "changelog").values(value=hi))
    rep.stats["reachable"] = len(reached)


def _lost_found(conn: Connection, engine: Any, inodes: dict[int, Any],
                children: dict[int, list[Any]]) -> int:
    for d in children.get(ROOT, ()):
        if d.name == LOST_FOUND and stat.S_ISDIR(inodes[d.ino].mode):
            return d.ino
    ino = engine.allocate_ids(conn, "inode", 1)[0]
    now = time.time_ns()
    conn.execute(insert(I).values(id=ino, mode=stat.S_IFDIR | 0o700, uid=0, gid=0, nlink=2,
                                  rdev=0, size=0, atime_ns=now, mtime_ns=now, ctime_ns=now,
                                  btime_ns=now, version=0, generation=0, storage=0))
    conn.execute(insert(D).values(parent=ROOT, name=LOST_FOUND, ino=ino, mode=stat.S_IFDIR))
    conn.execute(update(I).where(I.c.id == ROOT).values(nlink=I.c.nlink + 1))
    return ino


def _cycle_members(ino: int, by_ino: dict[int, list[Any]]) -> set[int]:
    """The directories on the parent chain of ``ino`` that lead back to it."""
    chain: list[int] = []
    cur = ino
    seen: set[int] = set()
    while cur not in seen:
        seen.add(cur)
        chain.append(cur)
        ents = by_ino.get(cur)
        if not ents:
            return set()
        cur = ents[0].parent
    return set(chain[chain.index(cur):])


def _in_cycle(ino: int, by_ino: dict[int, list[Any]], inodes: dict[int, Any]) -> bool:
    return stat.S_ISDIR(inodes[ino].mode) and ino in _cycle_members(ino, by_ino)
