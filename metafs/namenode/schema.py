"""The metadata schema (SQLAlchemy 2 Core) and its versioned migrations.

Inodes carry immutable ids. Directory entries are rows keyed by (parent, name) that point
at an inode, so a rename touches a constant number of rows whatever the size of the
subtree, and hard links are several entries naming one inode.
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection

from ..posix import ROOT_INO

metadata = MetaData()

# Names compare byte-wise everywhere so that keyset paging of directories is stable.
NameText = Text().with_variant(String(collation="C"), "postgresql")

inodes = Table(
    "inodes",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("mode", Integer, nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("gid", BigInteger, nullable=False),
    Column("nlink", Integer, nullable=False),
    Column("rdev", BigInteger, nullable=False, default=0),
    Column("size", BigInteger, nullable=False, default=0),
    Column("atime_ns", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("ctime_ns", BigInteger, nullable=False),
    Column("btime_ns", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False, default=0),
    Column("generation", BigInteger, nullable=False, default=0),
    # 0: data inline in file_data (or none); 1: data in blocks (see the blockstore)
    Column("storage", SmallInteger, nullable=False, default=0),
    Column("target", Text, nullable=True),  # symlink target
)

dentries = Table(
    "dentries",
    metadata,
    Column("parent", BigInteger, primary_key=True),
    Column("name", NameText, primary_key=True),
    Column("ino", BigInteger, nullable=False),
    Column("mode", Integer, nullable=False),  # type bits, for readdir without a join
    Index("ix_dentries_ino", "ino"),
)

file_data = Table(
    "file_data",
    metadata,
    Column("ino", BigInteger, primary_key=True, autoincrement=False),
    Column("data", LargeBinary, nullable=False),
)

xattrs = Table(
    "xattrs",
    metadata,
    Column("ino", BigInteger, primary_key=True),
    Column("name", NameText, primary_key=True),
    Column("value", LargeBinary, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", Text, nullable=False, default=""),
    Column("uid", BigInteger, nullable=False, default=0),
    Column("pid", BigInteger, nullable=False, default=0),
    Column("started_ns", BigInteger, nullable=False),
    Column("expires_ns", BigInteger, nullable=False),
    # v5: the authenticated identity that opened the session ("" where no one is
    # authenticated); only that identity may name the session, its handles and its locks
    Column("owner", Text, nullable=False, default=""),
)

handles = Table(
    "handles",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("ino", BigInteger, nullable=False),
    Column("session", String(64), nullable=False),
    Column("flags", Integer, nullable=False),
    Column("opened_ns", BigInteger, nullable=False),
    Index("ix_handles_ino", "ino"),
    Index("ix_handles_session", "session"),
)

# Change records, one total order by seq consistent with commit order (see changelog.py).
changelog = Table(
    "changelog",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("op", SmallInteger, nullable=False),
    Column("ino", BigInteger, nullable=False),
    Column("ts_ns", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),  # serialized ChangeRecord (without seq)
)

# Small named counters: the changelog head (the last position handed out), id allocation
# on engines without sequences, and the lock serializing cross-directory directory renames.
counters = Table(
    "counters",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_ns", BigInteger, nullable=False),
)

COUNTERS = ("changelog", "inode", "handle", "rename_lock")

# -- v2: block data of large files (see metafs/namenode/blocks.py) --
# Chunk ``idx`` of inode ``ino`` is the immutable block ``key``; ``length`` bytes of it
# belong to the file (a truncate may shorten it; past it the chunk reads as zeros).
blocks = Table(
    "blocks",
    metadata,
    Column("ino", BigInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("key", Text, nullable=False),
    Column("length", BigInteger, nullable=False),
    Column("checksum", Text, nullable=False),
    Index("ux_blocks_key", "key", unique=True),
)

# Blocks no longer referenced (overwritten, truncated away, freed files): removed from the
# store by garbage collection once ``freed_ns`` is older than the grace period.
block_garbage = Table(
    "block_garbage",
    metadata,
    Column("key", Text, primary_key=True),
    Column("freed_ns", BigInteger, nullable=False),
    Index("ix_block_garbage_freed", "freed_ns"),
)


def _v1(conn: Connection) -> None:
    """Initial schema."""
    metadata.create_all(conn, tables=[inodes, dentries, file_data, xattrs, sessions,
                                      handles, changelog, counters])
    conn.execute(insert(counters), [{"name": n, "value": 0} for n in COUNTERS])
    # inode ids start after the root
    conn.execute(counters.update().where(counters.c.name == "inode").values(value=ROOT_INO))


def _v2(conn: Connection) -> None:
    """Block mappings and the block garbage list."""
    metadata.create_all(conn, tables=[blocks, block_garbage])


# -- v3: directory quotas (see metafs/namenode/quota.py) --
quotas = Table(
    "quotas",
    metadata,
    Column("ino", BigInteger, primary_key=True, autoincrement=False),
    Column("max_files", BigInteger, nullable=False, default=0),  # 0: no limit
    Column("max_bytes", BigInteger, nullable=False, default=0),  # 0: no limit
)


def _v3(conn: Connection) -> None:
    """Directory quotas."""
    metadata.create_all(conn, tables=[quotas])


# -- v4: cluster-wide fcntl and flock locks (see metafs/namenode/locks.py) --
# One row per held lock. ``session`` is the holder's client id, ``owner`` the kernel's
# 64-bit lock owner (stored signed). ``start``..``end`` is inclusive; ``end`` = 2^63-1
# means "to EOF". flock locks cover 0..2^63-1.
locks = Table(
    "locks",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("ino", BigInteger, nullable=False),
    Column("session", String(64), nullable=False),
    Column("owner", BigInteger, nullable=False),
    Column("kind", String(8), nullable=False),   # 'posix' | 'flock'
    Column("type", String(8), nullable=False),   # 'read' | 'write'
    Column("start", BigInteger, nullable=False),
    Column("end", BigInteger, nullable=False),
    Column("pid", BigInteger, nullable=False, default=0),
    Index("ix_locks_ino", "ino", "kind", "start"),
    Index("ix_locks_session", "session"),
)


def _v4(conn: Connection) -> None:
    """File locks."""
    metadata.create_all(conn, tables=[locks])


# -- v5: records awaiting their changelog position (see changelog.py, StampedLog) --
# A writing transaction appends its records here under one ticket ``ord`` (``idx`` orders
# them); after commit a stamping round moves them into ``changelog`` in (ord, idx) order.
# Engines that number records inside the transaction (SQLite) leave it empty.
changelog_pending = Table(
    "changelog_pending",
    metadata,
    Column("ord", BigInteger, primary_key=True, autoincrement=False),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("op", SmallInteger, nullable=False),
    Column("ino", BigInteger, nullable=False),
    Column("ts_ns", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("added_ns", BigInteger, nullable=False),  # database clock at the append
)


def _v5(conn: Connection) -> None:
    """Changelog records awaiting their position."""
    metadata.create_all(conn, tables=[changelog_pending])


def _v6(conn: Connection) -> None:
    """Sessions belong to the identity that opened them. (A database made at this version
    already has the column: v1 creates the table as it is defined now.) Sessions open at
    the upgrade get the owner "" and stay usable only by unauthenticated callers."""
    if "owner" not in {c["name"] for c in inspect(conn).get_columns("sessions")}:
        conn.execute(text("ALTER TABLE sessions ADD COLUMN owner TEXT NOT NULL DEFAULT ''"))


# -- v7: the volume's identity, and which identity each provenance run belongs to --
# ``volume`` holds one row per named property; "uuid" names this file system (clients and
# the provenance store key what they keep per file system by it). ``runs`` binds a run id
# to the uid that first named it (see metafs/namenode/runs.py).
volume = Table(
    "volume",
    metadata,
    Column("key", String(32), primary_key=True),
    Column("value", Text, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("uid", BigInteger, nullable=False),
    Column("started_ns", BigInteger, nullable=False),
)


def _v7(conn: Connection) -> None:
    """The volume uuid and run owners."""
    import uuid

    metadata.create_all(conn, tables=[volume, runs])
    if conn.execute(select(volume.c.value).where(volume.c.key == "uuid")).first() is None:
        conn.execute(insert(volume).values(key="uuid", value=str(uuid.uuid4())))


# -- v8: projects (see metafs/namenode/projects.py) --
# A project is the directory /Projects/NAME (``ino``) with a group of its own (``gid``).
# Each member has a role and a uid of its own in that project (a person is a different
# identity in each project); credentials are tokens stored as digests, each bound to one
# (project, user). A share makes the data set directory ``ino`` of ``project`` appear in
# ``to_project`` as the entry (``entry_parent``, ``entry_name``); the data set's subtree
# then has the share group ``gid``.
projects = Table(
    "projects",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("gid", BigInteger, nullable=False, unique=True),
    Column("ino", BigInteger, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
)

project_members = Table(
    "project_members",
    metadata,
    Column("project", String(64), primary_key=True),
    Column("user", String(128), primary_key=True),
    Column("role", String(16), nullable=False),  # 'data_owner' | 'data_scientist'
    Column("uid", BigInteger, nullable=False, unique=True),
)

project_credentials = Table(
    "project_credentials",
    metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("project", String(64), nullable=False),
    Column("user", String(128), nullable=False),
    Column("created_ns", BigInteger, nullable=False),
)

project_shares = Table(
    "project_shares",
    metadata,
    Column("ino", BigInteger, primary_key=True, autoincrement=False),
    Column("to_project", String(64), primary_key=True),
    Column("project", String(64), nullable=False),
    Column("gid", BigInteger, nullable=False),
    Column("read_only", SmallInteger, nullable=False),
    Column("entry_parent", BigInteger, nullable=False),
    Column("entry_name", NameText, nullable=False),
)


def _v8(conn: Connection) -> None:
    """Projects, their members, per-project credentials and shares."""
    metadata.create_all(conn, tables=[projects, project_members, project_credentials,
                                      project_shares])
    if conn.execute(select(counters.c.name).where(counters.c.name == "project_id")).first() \
            is None:
        conn.execute(insert(counters).values(name="project_id", value=0))


requests = Table(
    "requests",
    metadata,
    # what the write transactions of a client's call committed, by its request id, so a
    # retry of the call answers from them (metafs.namenode.requests)
    Column("id", String(64), primary_key=True),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("owner", Text, nullable=False),
    Column("result", LargeBinary, nullable=False),
    Column("created_ns", BigInteger, nullable=False, index=True),
)


def _v9(conn: Connection) -> None:
    """Request records (retried calls run at most once)."""
    metadata.create_all(conn, tables=[requests])


# -- v10: which process read which project's data (metafs.namenode.projects) --
# ``process`` is a key naming one process of one machine (boot id, pid, start time) as its
# mounts see it; ``gid`` the group (a project's or a share's) of a file it opened for
# reading. A write by that process where the group is not readable is refused. Rows go
# after ``Projects.FLOW_KEEP``.
project_reads = Table(
    "project_reads",
    metadata,
    Column("process", String(128), primary_key=True),
    Column("gid", BigInteger, primary_key=True, autoincrement=False),
    Column("read_ns", BigInteger, nullable=False, index=True),
)


def _v10(conn: Connection) -> None:
    """Project reads by process (the project boundary across mounts)."""
    metadata.create_all(conn, tables=[project_reads])


project_gateways = Table(
    "project_gateways",
    metadata,
    # service identities authorized to act for a project's members (each as its own
    # project identity) from a shared mount (metafs.namenode.projects)
    Column("project", String(64), primary_key=True),
    Column("service", String(128), primary_key=True),
    Column("created_ns", BigInteger, nullable=False),
)


def _v11(conn: Connection) -> None:
    """Project gateways."""
    metadata.create_all(conn, tables=[project_gateways])


# -- v12: the common creates, removals and renames as one statement each (PostgreSQL) --
# Functions that run the plain case of a create, a mkdir, an unlink, an rmdir and a
# rename within one directory whole, in the order and with the checks of the namespace's own path
# (metafs/namenode/entries.py, rename.py): called in autocommit, each is a transaction of
# one round trip. Any case but the plain one (an error to report, a name replaced under
# the locks, a rename onto an existing name, a name that exists) changes nothing and
# returns NULL: the caller
# then runs its general path, which says what is wrong. A change record's body is the
# caller's serialized ChangeRecord cut where the fields only the database knows go
# (metafs.namenode.changelog.RecordParts), with those fields put in their places.
_PG_FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION metafs_pb_varint(v bigint) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    out bytea := '';
BEGIN
    WHILE v < 0 OR v >= 128 LOOP
        out := out || set_byte('\x00'::bytea, 0, ((v & 127) | 128)::integer);
        v := (v >> 7) & 144115188075855871;  -- a logical shift: int64 is two's complement
    END LOOP;
    RETURN out || set_byte('\x00'::bytea, 0, v::integer);
END $$;

-- The varint fields p_first, p_first + 1, ... of a protobuf message holding p_vals, those
-- of 0 absent (as proto3 writes them). Loops of small expressions, not one expression of
-- every byte: PostgreSQL sets up a function's expressions again in every transaction, and
-- these run in transactions of one statement.
CREATE OR REPLACE FUNCTION metafs_pb_fields(p_first integer, p_vals bigint[]) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    out bytea := '';
    v bigint;
    tag integer;
BEGIN
    FOR k IN 1 .. cardinality(p_vals) LOOP
        v := p_vals[k];
        CONTINUE WHEN v = 0;
        tag := (p_first + k - 1) << 3;  -- wire type 0
        WHILE tag >= 128 LOOP
            out := out || set_byte('\x00'::bytea, 0, (tag & 127) | 128);
            tag := tag >> 7;
        END LOOP;
        out := out || set_byte('\x00'::bytea, 0, tag);
        WHILE v < 0 OR v >= 128 LOOP
            out := out || set_byte('\x00'::bytea, 0, ((v & 127) | 128)::integer);
            v := (v >> 7) & 144115188075855871;
        END LOOP;
        out := out || set_byte('\x00'::bytea, 0, v::integer);
    END LOOP;
    RETURN out;
END $$;

-- ChangeRecord.attr (field 8): the pb.Attr of an inode row (metafs.namenode.rows.to_attr)
CREATE OR REPLACE FUNCTION metafs_pb_attr(i inodes) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    a bytea;
BEGIN
    a := metafs_pb_fields(1, ARRAY[i.id, i.mode, i.nlink, i.uid, i.gid, i.rdev, i.size,
                                   i.atime_ns, i.mtime_ns, i.ctime_ns, i.btime_ns, i.version,
                                   CASE WHEN i.storage = 0 THEN 1 ELSE 0 END, i.generation]);
    RETURN '\x42'::bytea || metafs_pb_varint(length(a)) || a;
END $$;

-- Whether the caller (uid, its groups with the primary first, its read-only groups) may
-- access directory d for p_want (R 4, W 2, X 1): metafs.posix.allowed
CREATE OR REPLACE FUNCTION metafs_allowed(d inodes, p_uid bigint, p_gids bigint[],
                                          p_ro bigint[], p_want integer) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_uid = 0 OR (CASE
        WHEN p_uid = d.uid THEN d.mode >> 6
        WHEN d.gid = ANY (p_gids) THEN (d.mode >> 3)
                                       & CASE WHEN d.gid = ANY (p_ro) THEN 5 ELSE 7 END
        ELSE d.mode END) & p_want = p_want
$$;

-- The records (op, ino, body) of one transaction and the row recording its call's
-- result (p_rid NULL: none), appended as metafs.namenode.changelog.StampedLog.append
-- does, under one ticket taken last.
CREATE OR REPLACE FUNCTION metafs_append(p_ops smallint[], p_inos bigint[], p_bodies bytea[],
                                         p_now bigint, p_rid varchar, p_ridx integer,
                                         p_owner text, p_result bytea) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_rid IS NOT NULL THEN
        INSERT INTO requests (id, idx, owner, result, created_ns)
        VALUES (p_rid, p_ridx, p_owner, p_result, p_now);
    END IF;
    INSERT INTO changelog_pending (ord, idx, op, ino, ts_ns, body, added_ns)
    SELECT o.ord, t.idx - 1, t.op, t.ino, p_now, t.body,
           (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint
    FROM (SELECT nextval('metafs_changelog_ord') AS ord) AS o,
         unnest(p_ops, p_inos, p_bodies) WITH ORDINALITY AS t(op, ino, body, idx);
END $$;

-- An inode's last name is gone (its link count set to p_left, ctime p_now): its rows
-- deleted, with what the block layer's and the file locks' free hooks delete, when
-- p_left is 0 and no handle holds it open. Returns whether it was freed.
CREATE OR REPLACE FUNCTION metafs_drop_link(p_ino bigint, p_left integer, p_now bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF p_left = 0 AND NOT EXISTS (SELECT 1 FROM handles WHERE ino = p_ino) THEN
        DELETE FROM file_data WHERE ino = p_ino;
        DELETE FROM xattrs WHERE ino = p_ino;
        DELETE FROM inodes WHERE id = p_ino;
        INSERT INTO block_garbage (key, freed_ns) SELECT key, p_now FROM blocks WHERE ino = p_ino;
        DELETE FROM blocks WHERE ino = p_ino;
        DELETE FROM locks WHERE ino = p_ino;
        RETURN true;
    END IF;
    UPDATE inodes SET nlink = p_left, ctime_ns = p_now WHERE id = p_ino;
    RETURN false;
END $$;

-- unlink (p_dir false) or rmdir (p_dir true) of the entry p_name of p_parent
-- (metafs.namenode.entries.Entries.unlink and rmdir): the inode removed, or NULL
CREATE OR REPLACE FUNCTION metafs_remove(
    p_parent bigint, p_name varchar, p_dir boolean, p_uid bigint, p_gids bigint[],
    p_ro bigint[], p_now bigint, p_op smallint, p_parts bytea[], p_free_op smallint,
    p_free_parts bytea[], p_rid varchar, p_ridx integer, p_owner text, p_result bytea)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    locked bigint[];
    d inodes;
    r inodes;
    lft integer;
    body bytea;
BEGIN
    -- the locks in id order, of the directory and of what the name names before them
    SELECT array_agg(id) INTO locked FROM (
        SELECT id FROM inodes WHERE id = ANY (p_parent || ARRAY(
            SELECT ino FROM dentries WHERE parent = p_parent AND name = p_name))
        ORDER BY id FOR UPDATE) AS l;
    -- each statement below sees what committed before the locks were granted
    SELECT * INTO d FROM inodes WHERE id = p_parent;
    IF d.id IS NULL OR d.mode & 61440 <> 16384 OR d.nlink <= 0
            OR NOT metafs_allowed(d, p_uid, p_gids, p_ro, 3) THEN
        RETURN NULL;
    END IF;
    SELECT i.* INTO r FROM dentries x JOIN inodes i ON i.id = x.ino
    WHERE x.parent = p_parent AND x.name = p_name;
    IF r.id IS NULL OR NOT r.id = ANY (locked) OR (r.mode & 61440 = 16384) <> p_dir
            OR (d.mode & 512 <> 0 AND p_uid NOT IN (0, d.uid, r.uid))
            OR (p_dir AND EXISTS (SELECT 1 FROM dentries WHERE parent = r.id)) THEN
        RETURN NULL;
    END IF;
    lft := CASE WHEN p_dir THEN 0 ELSE r.nlink - 1 END;
    DELETE FROM dentries WHERE parent = p_parent AND name = p_name;
    UPDATE inodes SET nlink = nlink - CASE WHEN p_dir THEN 1 ELSE 0 END,
                      mtime_ns = p_now, ctime_ns = p_now
    WHERE id = p_parent;
    body := p_parts[1] || metafs_pb_fields(3, ARRAY[r.id]) || p_parts[2]
            || metafs_pb_fields(18, ARRAY[lft]) || p_parts[3];
    IF metafs_drop_link(r.id, lft, p_now) THEN
        PERFORM metafs_append(
            ARRAY[p_op, p_free_op], ARRAY[r.id, r.id],
            ARRAY[body, p_free_parts[1] || metafs_pb_fields(3, ARRAY[r.id]) || p_free_parts[2]],
            p_now, p_rid, p_ridx, p_owner, p_result);
    ELSE
        PERFORM metafs_append(ARRAY[p_op], ARRAY[r.id], ARRAY[body], p_now, p_rid, p_ridx,
                              p_owner, p_result);
    END IF;
    RETURN r.id;
END $$;

-- a new inode p_ino (its columns from the caller, its times p_now) named p_name in
-- p_parent (metafs.namenode.entries.Entries.create without open, and mkdir), its record
-- p_body whole: the inode made, or NULL (also when p_quota says quotas are to be checked
-- and one exists, and in a set-group-ID directory, whose group the inode would take)
CREATE OR REPLACE FUNCTION metafs_create(
    p_parent bigint, p_name varchar, p_ino bigint, p_mode integer, p_nlink integer,
    p_rdev bigint, p_delta integer, p_quota boolean, p_uid bigint, p_gid bigint,
    p_gids bigint[], p_ro bigint[], p_now bigint, p_op smallint, p_body bytea,
    p_rid varchar, p_ridx integer, p_owner text, p_result bytea)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    d inodes;
BEGIN
    SELECT * INTO d FROM inodes WHERE id = p_parent FOR UPDATE;
    IF d.id IS NULL OR d.mode & 61440 <> 16384 OR d.nlink <= 0 OR d.mode & 1024 <> 0
            OR NOT metafs_allowed(d, p_uid, p_gids, p_ro, 3)
            OR (p_quota AND EXISTS (SELECT 1 FROM quotas)) THEN
        RETURN NULL;
    END IF;
    INSERT INTO dentries (parent, name, ino, mode)
    VALUES (p_parent, p_name, p_ino, p_mode & 61440)
    ON CONFLICT (parent, name) DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO inodes (id, mode, uid, gid, nlink, rdev, size, atime_ns, mtime_ns, ctime_ns,
                        btime_ns, version, generation, storage, target)
    VALUES (p_ino, p_mode, p_uid, p_gid, p_nlink, p_rdev, 0, p_now, p_now, p_now, p_now,
            0, 0, 0, NULL);
    UPDATE inodes SET nlink = nlink + p_delta, mtime_ns = p_now, ctime_ns = p_now
    WHERE id = p_parent;
    PERFORM metafs_append(ARRAY[p_op], ARRAY[p_ino], ARRAY[p_body], p_now, p_rid, p_ridx,
                          p_owner, p_result);
    RETURN p_ino;
END $$;

-- rename(2) without flags of p_sn in p_sp to p_dn in p_dp, where that name is absent or
-- names another inode and neither is a directory (metafs.namenode.rename.Renames.rename):
-- the inode moved, or NULL (also when p_quota says quotas are to be checked and one
-- exists). A directory that changes parent takes the rename lock first, as the namespace
-- does, and may not go into its own subtree.
CREATE OR REPLACE FUNCTION metafs_rename(
    p_sp bigint, p_sn varchar, p_dp bigint, p_dn varchar, p_quota boolean, p_uid bigint,
    p_gids bigint[], p_ro bigint[], p_now bigint, p_op smallint, p_parts bytea[],
    p_free_op smallint, p_free_parts bytea[], p_rid varchar, p_ridx integer, p_owner text,
    p_result bytea)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    locked bigint[];
    sd inodes;
    dd inodes;
    s inodes;
    t inodes;
    lft integer := 0;
    body bytea;
    renames boolean := false;
    delta integer := 0;
    cur bigint;
    seen integer := 0;
BEGIN
    -- (what the name names before any lock says whether to take the rename lock)
    IF p_sp <> p_dp AND EXISTS (SELECT 1 FROM dentries WHERE parent = p_sp AND name = p_sn
                                                       AND mode = 16384) THEN
        PERFORM 1 FROM counters WHERE name = 'rename_lock' FOR UPDATE;
        renames := true;
    END IF;
    SELECT array_agg(id) INTO locked FROM (
        SELECT id FROM inodes WHERE id = ANY (ARRAY[p_sp, p_dp] || ARRAY(
            SELECT ino FROM dentries WHERE (parent = p_sp AND name = p_sn)
                                        OR (parent = p_dp AND name = p_dn)))
        ORDER BY id FOR UPDATE) AS l;
    SELECT * INTO sd FROM inodes WHERE id = p_sp;
    SELECT * INTO dd FROM inodes WHERE id = p_dp;
    IF sd.id IS NULL OR sd.mode & 61440 <> 16384 OR sd.nlink <= 0
            OR NOT metafs_allowed(sd, p_uid, p_gids, p_ro, 3)
            OR dd.id IS NULL OR dd.mode & 61440 <> 16384 OR dd.nlink <= 0
            OR NOT metafs_allowed(dd, p_uid, p_gids, p_ro, 3)
            OR (p_quota AND EXISTS (SELECT 1 FROM quotas)) THEN
        RETURN NULL;
    END IF;
    SELECT i.* INTO s FROM dentries x JOIN inodes i ON i.id = x.ino
    WHERE x.parent = p_sp AND x.name = p_sn;
    SELECT i.* INTO t FROM dentries x JOIN inodes i ON i.id = x.ino
    WHERE x.parent = p_dp AND x.name = p_dn;
    IF s.id IS NULL OR NOT s.id = ANY (locked)
            OR (s.mode & 61440 = 16384 AND (t.id IS NOT NULL OR (p_sp <> p_dp AND (
                NOT renames OR NOT metafs_allowed(s, p_uid, p_gids, p_ro, 2)))))
            OR (sd.mode & 512 <> 0 AND p_uid NOT IN (0, sd.uid, s.uid))
            OR (t.id IS NOT NULL AND (NOT t.id = ANY (locked) OR t.id = s.id
                                      OR t.mode & 61440 = 16384
                                      OR (dd.mode & 512 <> 0
                                          AND p_uid NOT IN (0, dd.uid, t.uid)))) THEN
        RETURN NULL;
    END IF;
    IF s.mode & 61440 = 16384 AND p_sp <> p_dp THEN
        -- not into its own subtree (the rename lock keeps every directory's parent)
        cur := p_dp;
        LOOP
            IF cur = s.id OR seen > 100000 THEN
                RETURN NULL;
            END IF;
            EXIT WHEN cur = 1;
            SELECT parent INTO cur FROM dentries WHERE ino = cur LIMIT 1;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            seen := seen + 1;
        END LOOP;
        delta := 1;  -- its '..' leaves p_sp for p_dp
    END IF;
    IF t.id IS NOT NULL THEN
        DELETE FROM dentries WHERE parent = p_dp AND name = p_dn;
    END IF;
    UPDATE dentries SET parent = p_dp, name = p_dn WHERE parent = p_sp AND name = p_sn;
    UPDATE inodes SET nlink = nlink + CASE WHEN id = p_sp THEN -delta ELSE delta END,
                      mtime_ns = p_now, ctime_ns = p_now
    WHERE id IN (p_sp, p_dp);
    UPDATE inodes SET ctime_ns = p_now WHERE id = s.id RETURNING * INTO s;
    IF t.id IS NOT NULL THEN
        lft := t.nlink - 1;
    END IF;
    body := p_parts[1] || metafs_pb_fields(3, ARRAY[s.id]) || p_parts[2] || metafs_pb_attr(s)
            || p_parts[3] || metafs_pb_fields(11, ARRAY[COALESCE(t.id, 0)]) || p_parts[4]
            || metafs_pb_fields(18, ARRAY[lft]) || p_parts[5];
    IF t.id IS NOT NULL AND metafs_drop_link(t.id, lft, p_now) THEN
        PERFORM metafs_append(
            ARRAY[p_op, p_free_op], ARRAY[s.id, t.id],
            ARRAY[body, p_free_parts[1] || metafs_pb_fields(3, ARRAY[t.id]) || p_free_parts[2]],
            p_now, p_rid, p_ridx, p_owner, p_result);
    ELSE
        PERFORM metafs_append(ARRAY[p_op], ARRAY[s.id], ARRAY[body], p_now, p_rid, p_ridx,
                              p_owner, p_result);
    END IF;
    RETURN s.id;
END $$;
"""


def _v12(conn: Connection) -> None:
    """The one-statement creates, removals and renames (PostgreSQL; elsewhere nothing)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(_PG_FUNCTIONS)


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _v1),
    (2, _v2),
    (3, _v3),
    (4, _v4),
    (5, _v5),
    (6, _v6),
    (7, _v7),
    (8, _v8),
    (9, _v9),
    (10, _v10),
    (11, _v11),
    (12, _v12),
]


def current_version(conn: Connection) -> int:
    schema_version.create(conn, checkfirst=True)
    row = conn.execute(select(schema_version.c.version).order_by(
        schema_version.c.version.desc()).limit(1)).first()
    return row[0] if row else 0


def migrate(conn: Connection, now_ns: int) -> list[int]:
    """Apply the migrations the database has not seen yet; returns their versions."""
    done = []
    have = current_version(conn)
    for version, step in MIGRATIONS:
        if version > have:
            step(conn)
            conn.execute(insert(schema_version).values(version=version, applied_ns=now_ns))
            done.append(version)
    return done
