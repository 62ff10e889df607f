"""The single source of metafs settings.

Settings are read, each later source overriding the earlier ones, from:

1. the defaults below;
2. a TOML config file: ``--config FILE``, else ``$METAFS_CONFIG``, else
   ``<user config dir>/metafs/config.toml`` when it exists;
3. ``METAFS_<NAME>`` environment variables (``METAFS_INLINE_LIMIT=131072``);
4. command-line flags (passed to :func:`load` as ``overrides``).

Nothing else in metafs hard-codes an address, a port, a path or a threshold.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import platformdirs

DEFAULT_PORT = 7420

# gRPC core's EventEngine I/O threads cost a Python client and server about a third of their
# call rate on small machines: every message crosses one of its threads in each process
# (measured here, docs/design.md "Calls over streams"). metafs runs gRPC on its polling I/O
# instead, unless GRPC_EXPERIMENTS is set by the user. It must be decided before grpc is
# first imported, so it is an environment variable, not a setting.
GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"
GRPC_EXPERIMENTS_RELEASES = ((1, 74), (1, 85))
"""The grpcio releases (first and last minor version) that know every experiment named above.
gRPC core logs an error for an experiment name it does not know (experiments are removed once
they become the only behaviour), so other releases keep gRPC's own default."""


def _grpc_release() -> tuple[int, int] | None:
    """The installed grpcio's (major, minor), read from its metadata without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = version("grpcio").split(".")[:2]
        return int(major), int(minor)
    except (PackageNotFoundError, ValueError):
        return None


def tune_grpc(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> bool:
    """Choose gRPC core's polling I/O before grpc loads (a no-op when ``GRPC_EXPERIMENTS``
    is already set, or set to empty to keep gRPC's own default, or when the installed grpcio
    is outside :data:`GRPC_EXPERIMENTS_RELEASES`). Returns whether the choice applies to this
    process (False once grpc is imported: it reads the variable then)."""
    import sys

    if "GRPC_EXPERIMENTS" in environ:
        return "grpc" not in sys.modules
    release = _grpc_release()
    first, last = GRPC_EXPERIMENTS_RELEASES
    if release is None or not first <= release <= last:
        return False
    environ["GRPC_EXPERIMENTS"] = GRPC_EXPERIMENTS
    return "grpc" not in sys.modules


def default_data_dir() -> str:
    return str(Path(platformdirs.user_data_dir("metafs", appauthor=False)))


@dataclass(frozen=True)
class Settings:
    # -- where the namenode's state lives --
    data_dir: str = field(default_factory=default_data_dir)
    """Embedded default: holds ``meta.db`` (SQLite) and ``blocks/`` (local block store)."""
    db_url: str = ""
    """SQLAlchemy-style URL: sqlite:///path/meta.db or postgresql://user@host/db. Empty: the
    SQLite file inside data_dir."""
    blocks_url: str = ""
    """file:///path or s3://bucket/prefix. Empty: ``blocks/`` inside data_dir."""

    # -- network --
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    """Address the namenode serves gRPC on."""
    namenode: str = ""
    """Address clients connect to (HOST:PORT, several separated by commas). Empty: embedded."""
    grpc_workers: int = 32
    """Threads serving ordinary calls."""
    max_subscribers: int = 16
    """Changelog streams served at once; each gets a thread of its own beyond grpc_workers."""
    max_call_streams: int = 64
    """Call streams (many ordinary calls over one stream, see docs/design.md) a namenode
    serves at once, each with a thread of its own beyond grpc_workers; clients past the
    limit make one unary call per operation instead."""
    call_streams: int = 4
    """Call streams a client keeps open to each namenode (one per call in flight; calls
    beyond them go as unary calls). 0: unary calls only."""
    rpc_timeout: float = 30.0
    """Seconds a client waits for a namenode call before failing with EIO."""
    failover_timeout: float = 60.0
    """Seconds a client keeps retrying a call whose namenode is gone (refused, reset,
    unavailable, or silent past the call's timeout), on the same namenode or the next
    listed one, before failing with EIO. 0: fail at the first such error."""

    # -- data layout --
    inline_limit: int = 64 * 1024
    """Files up to this many bytes keep their data in the metadata database."""
    block_size: int = 4 * 1024 * 1024
    """Size of the blocks larger files are cut into."""

    # -- block store (large files) --
    s3_endpoint: str = ""
    """S3-compatible endpoint URL. Empty: boto3's own choice (AWS_ENDPOINT_URL, or AWS)."""
    s3_region: str = ""
    """Region for S3 requests and signatures. Empty: boto3's chain (AWS_REGION, config)."""
    s3_retries: int = 8
    """Attempts per S3 request; server errors, throttling and timeouts are retried with
    backoff."""
    s3_outage_timeout: float = 120.0
    """Seconds an S3 request keeps being retried (with backoff) while the endpoint is
    unavailable (connection refused, reset or timed out, HTTP 502/503/504, throttling)
    before it fails with EIO: programs wait out an outage of the store instead of failing.
    0: fail at the first such error. A namenode waits at most 3 s per call, then answers it
    as unavailable, and its client tries the call again (failover_timeout); an embedded
    namenode's calls are tried again the same way, for up to this long."""
    s3_connect_timeout: float = 5.0
    s3_read_timeout: float = 20.0
    """Seconds without data before an S3 response counts as failed (and is retried)."""
    s3_max_connections: int = 32
    presign_expiry: float = 900.0
    """Seconds a presigned block URL stays valid."""
    block_checksum_piece: int = 16 * 1024
    """Blocks carry one CRC-32 per piece of this size, so ranged reads are verified too: a
    random read fetches (and verifies) the pieces around it, so smaller pieces make small
    random reads cheaper, at 8 bytes of layout per piece (2 KiB per 4 MiB block)."""
    block_cache_dir: str = "auto"
    """Local directory caching blocks clients read and write (like JuiceFS's cache dir).
    ``auto``: ``<user cache dir>/metafs/blocks`` for a remote (S3) store, none for a local
    directory store. Empty or ``off``: no disk cache."""
    block_cache_size: int = 10 * 1024**3
    """Bytes the block cache directory may hold; least recently used blocks go first."""
    block_cache_fill: int = 2
    """Random reads of a block that is not in the cache directory are answered with a
    ranged GET, and the whole block is fetched into the cache in the background (at most
    this many at once; 0: never), so later reads of it are local."""
    block_cache_free_ratio: float = 0.1
    """The cache never fills its disk past this fraction of free space."""
    block_cache_writes: bool = True
    """Also keep blocks this client uploads in the cache (readers on the machine that
    wrote them need not download them)."""
    block_presign: bool = False
    """Move blocks through presigned URLs the namenode hands out, for clients without
    credentials of their own for the block store."""
    block_memory_cache: int = 64 * 1024**2
    """Bytes of recently read blocks each open file keeps in memory."""
    block_readahead: int = 8
    """Blocks fetched ahead of a sequential reader."""
    block_direct_writes: bool = True
    """A local-directory store writes blocks of 2 MiB and more with O_DIRECT, from a
    page-aligned copy, past the page cache (where the file system has no O_DIRECT, through
    the page cache as before). Reads still go through the page cache."""
    block_fsync: str = "auto"
    """fsync each block a local-directory store writes (and its directory) before the
    metadata may reference it. ``auto``: as durable as the metadata the block is committed
    to: off for an embedded namenode on SQLite with synchronous NORMAL (whose commits
    survive any process crash, as written blocks do, but not a power loss), on otherwise
    (PostgreSQL, SQLite FULL, and clients of a remote namenode, which cannot tell)."""
    block_parallel: int = 8
    """Concurrent block uploads and downloads per client."""
    block_write_buffer: int = 64 * 1024**2
    """Bytes of written data a file buffers before it uploads finished blocks."""
    gc_grace: float = 3600.0
    """Seconds an unreferenced block is kept before garbage collection removes it (readers
    of an old file version and uploads not yet committed are safe for this long)."""
    gc_interval: float = 3600.0
    """Seconds between background garbage collections in the namenode (0: off)."""

    # -- database --
    sqlite_busy_timeout_ms: int = 30_000
    sqlite_synchronous: str = "NORMAL"
    """NORMAL survives a crash of any process (WAL); FULL also survives power loss."""
    db_retries: int = 30
    """Attempts for a transaction that hits a serialization failure or deadlock."""
    db_pool_size: int = 8
    db_idle_in_transaction_timeout: float = 10.0
    """PostgreSQL: seconds a namenode's connection may sit inside a transaction without a
    statement before the server ends it (0: never). A namenode stopped or cut off in the
    middle of a write transaction would otherwise hold its row locks, and every other
    namenode's writes to those rows would wait for it."""

    # -- limits (docs/security.md "Limits"): no one client can starve the rest --
    max_xattr_size: int = 64 * 1024
    readdir_page: int = 1000
    bulk_max_entries: int = 100_000
    bulk_chunk_entries: int = 2000
    """A bulk create commits in transactions of at most this many entries, so other writers
    wait for one chunk, not the whole call (a bulk create is atomic per chunk)."""
    grpc_max_receive_bytes: int = 64 * 1024**2
    """Largest gRPC message a namenode accepts and a client accepts (RESOURCE_EXHAUSTED,
    EMSGSIZE for the caller, past it)."""
    grpc_max_send_bytes: int = 64 * 1024**2
    """Largest gRPC message a namenode or a client sends."""
    max_record_bytes: int = 256 * 1024
    """Largest run record (RecordRun's JSON) or access event a remote caller may add to
    the changelog (E2BIG past it)."""
    changelog_reply_bytes: int = 4 * 1024**2
    """A ReadChangelog reply holds records up to about this many bytes (fewer records than
    asked for rather than a reply too large to send; always at least one)."""
    max_long_polls: int = 32
    """ReadChangelog calls waiting for new records (wait_ms) at once, in total; each holds
    a thread of its own beyond grpc_workers."""
    max_long_polls_per_identity: int = 4
    """Waiting ReadChangelog calls of one identity (EAGAIN past it)."""
    max_subscribers_per_identity: int = 4
    """SubscribeChangelog streams of one identity (EAGAIN past it)."""
    max_calls_per_identity: int = 24
    """Calls one identity has in progress at once (ordinary calls and open call streams;
    EAGAIN past it). Keep it below grpc_workers, so others always find a thread."""
    max_handles_per_session: int = 4096
    """Open handles one client session may hold (EMFILE past it)."""
    capacity_bytes: int = 1 << 50
    """Size reported by statfs (metadata capacity is not the limit; the store is)."""
    capacity_inodes: int = 1 << 40

    # -- sessions and handles --
    session_lease: float = 60.0
    """A client that has not renewed its session for this long is considered dead: its open
    handles are dropped and unlinked files it kept open are reclaimed."""

    request_retention: float = 900.0
    """Seconds a namenode remembers what a client's call committed, by its request id, so
    that a retry of the call (after its namenode went away) is answered from it instead of
    running again. Longer than any client's failover_timeout."""

    # -- changelog --
    changelog_poll: float = 0.05
    """Seconds between checks for records committed by other namenodes."""
    changelog_stamp_interval: float = 0.02
    """PostgreSQL: shortest time in seconds between two stamping rounds of one namenode
    under load (each round is a transaction of its own): commits meanwhile share the next
    round. A reader that must see what was committed before it (read-your-writes) gets a
    round at once; a long poll joins the next one. Records get their positions (and reach
    changelog readers) up to this much later. 0: a round after every commit."""

    # -- search index (metafs/cdc/search) --
    search_dir: str = ""
    """Where the indexer keeps its state and embedded index. Empty: ``search/`` inside
    data_dir."""
    search_backend: str = "embedded"
    """``embedded`` (SQLite FTS5 + typed tags, no server) or ``elasticsearch``."""
    search_in_process: bool = True
    """Run the indexer inside the process of an embedded namenode (when a search is made)."""
    search_batch: int = 5000
    """Change records the indexer applies per transaction."""
    search_wait_timeout: float = 60.0
    """Seconds a ``--wait`` search waits for the index to reach the changelog head."""
    serve_index: bool = False
    """``metafs serve`` runs the search indexer in its own process (into ``search_dir``) and
    answers Search calls from it. Without it, a namenode answers Search calls from an index
    that a ``metafs indexer`` keeps in ``search_dir`` (same host or shared volume), when
    there is one."""
    es_url: str = "http://127.0.0.1:9200"
    """Elasticsearch address for the elasticsearch search back end."""
    es_index: str = "metafs-files"
    """Elasticsearch index name (an index template ``<name>-template`` is installed)."""

    # -- provenance --
    access_events: bool = True
    """Clients (and the mount) report which files each process read and wrote, for the
    provenance graph. METAFS_ACCESS_EVENTS=0 turns the reports off."""
    access_batch: int = 256
    """Access events a client buffers before it sends them in one RecordAccess call."""
    access_flush_interval: float = 2.0
    """Seconds an access event may wait in a client's buffer before it is sent."""
    prov_db_url: str = ""
    """Database of the provenance graph (sqlite:///PATH or postgresql://...). Empty: the
    SQLite file ``provenance.db`` inside data_dir."""
    prov_dataset_dir_min: int = 2
    """A directory directly holding at least this many data-set files (by extension:
    .csv, .parquet, images, ...) is itself a data set: reads of its files count as one read
    of the directory."""

    # -- FUSE mount (metafs/fuse; see docs/fuse.md for the consistency each gives) --
    fuse_attr_timeout: float = -1.0
    """Seconds the kernel and the mount may answer stat() from cache. Changes made through
    other mounts become visible after at most this long (sooner with fuse_follow_changes).
    Negative (the default): 1 s on a mount of a remote namenode, 60 s on a mount of an
    embedded one that follows its changelog (see metafs.fuse.cache.kernel_timeouts)."""
    fuse_entry_timeout: float = -1.0
    """Seconds a name -> inode lookup may be cached (kernel dentries and the mount's table).
    Negative (the default): as fuse_attr_timeout."""
    fuse_negative_timeout: float = 0.0
    """Seconds a 'no such file' answer may be cached (0: names created elsewhere appear at
    once; within the changelog lag in a directory a following mount made itself)."""
    fuse_follow_changes: str = "auto"
    """Follow the namenode's changelog and drop cached names, attributes and page cache of
    inodes that other clients changed, so long timeouts stay coherent between mounts:
    ``on``, ``off``, or ``auto`` (on: for a remote namenode, and for an embedded one, whose
    only other writers are other processes opening the same data directory)."""
    fuse_follow_poll_ms: int = 200
    """Longest wait of one changelog poll when following changes (an embedded namenode's
    changelog is read this often: its commits are nearly all the mount's own)."""
    fuse_follow_delay_ms: int = 50
    """After applying a batch of other clients' changes, the follower waits this long
    before reading the changelog again, so that one read covers many changes under load.
    Other clients' changes reach the mount's caches this much later at most: a small
    part of the staleness mounts allow each other anyway, the kernel's attribute and
    entry timeouts."""
    fuse_kernel_cache: bool = True
    """Keep the kernel page cache of a file across opens when its data version is unchanged
    (close-to-open: every open asks the namenode for the current version)."""
    fuse_write_buffer: int = 4 * 1024 * 1024
    """Bytes of contiguous small writes an open file coalesces before sending them (pushed
    on close, fsync, read, stat of the file, or when full)."""
    fuse_readahead: int = 1024 * 1024
    """Bytes a sequential reader of an open file fetches ahead in one call."""
    fuse_max_write: int = 1024 * 1024
    """Largest write request the kernel sends (libfuse 3 allows up to 1 MiB)."""
    fuse_switch_interval_ms: float = 1.0
    """The mount process's interpreter switch interval (Python's default is 5 ms): how long
    a FUSE request may wait behind a block upload thread for the interpreter lock (measured
    here: p99 of 1 MiB writes 14 -> 5 ms)."""
    fuse_kernel_readahead_kb: int = 4096
    """The kernel's read-ahead window for the mount (its bdi's ``read_ahead_kb``, set by a
    mount running as root): with the default 128 KiB a sequential reader costs one FUSE
    call per 128 KiB; larger windows let the kernel ask for up to 1 MiB per call. 0 leaves
    the kernel's default."""
    fuse_rpc_timeout: float = 10.0
    """Seconds a mount waits for a namenode call before the operation fails with EIO."""
    fuse_access_events: bool = True
    """Record which processes read and wrote which files (provenance access events)."""
    fuse_access_batch: int = 512
    """Access events sent to the namenode in one RecordAccess call."""
    fuse_access_interval: float = 1.0
    """Seconds between sends of pending access events."""
    fuse_allow_other: bool = False
    """Let users other than the one who mounted use the mount (needs root, or
    user_allow_other in /etc/fuse.conf)."""
    fuse_project: str = ""
    """Mount one project (``metafs mount --project NAME``): the mount shows
    ``/Projects/NAME`` as its root and needs that project's credential."""
    fuse_default_permissions: str = "auto"
    """Let the kernel check mode bits against cached attributes too (the namenode always
    checks): required for cached lookups to be safe for several users. ``auto``: on with
    fuse_allow_other (without it only the mounting user can use the mount)."""
    fuse_threads: bool = True
    """Serve FUSE requests on several threads."""
    fuse_lazy_read_handles: str = "auto"
    """Open files without a namenode handle (read-only calls instead of two write
    transactions per open/close; the namenode checks permission on every read and write).
    A name removed, or a mode changed, through this mount while such a file is open takes a
    handle first, so the file keeps working; a file removed by another client while open
    here reads ESTALE (as on NFS). ``auto``: on; ``off`` holds a namenode handle per open
    file, so a file another client removes stays readable here until closed."""
    fuse_max_threads: int = 16
    """Most threads serving FUSE requests at once (they stay alive once started)."""
    fuse_global_locks: bool = True
    """fcntl (POSIX record and OFD) and flock locks are held by the namenode, so they
    exclude each other across every mount (machine) of it; blocking waits retry with
    backoff. Off: the kernel keeps them, coherent only among the processes of one machine."""

    # -- logging --
    log_level: str = "INFO"

    # -- security (metafs/ops/auth.py): TLS, mutual TLS, tokens --
    tls_cert: str = ""
    """PEM certificate the namenode serves TLS with. Empty: plaintext gRPC."""
    tls_key: str = ""
    """PEM private key of tls_cert."""
    tls_ca: str = ""
    """PEM CA bundle: clients verify the namenode with it; with tls_client_auth the
    namenode verifies client certificates with it."""
    tls_client_auth: bool = False
    """Mutual TLS: the namenode requires a client certificate signed by tls_ca."""
    tls_client_cert: str = ""
    """PEM client certificate presented to the namenode (mutual TLS)."""
    tls_client_key: str = ""
    """PEM private key of tls_client_cert."""
    tls_server_name: str = ""
    """Host name the client expects in the namenode's certificate. Empty: the address's."""
    insecure: bool = False
    """Run without authentication on a non-loopback address (`metafs serve --insecure`):
    every caller's claimed uid is believed. Without it such a namenode refuses to start.
    On a client: allow a bearer token to cross plaintext to a non-loopback address."""
    auth_mode: str = "none"
    """``none``: callers' claimed ids are trusted; ``token``: a bearer token is required;
    ``cert``: a client certificate is required; ``any``: either (token first)."""
    auth_file: str = ""
    """TOML identity table: [tokens.NAME] and [certs.COMMON_NAME] entries with uid, gid,
    groups (and ``token`` or ``token_sha256`` for tokens; ``trusted = true`` for a
    service that acts for other users, such as a FUSE mount with allow_other)."""
    token: str = ""
    """Bearer token this client sends. Empty: none (or $METAFS_TOKEN_FILE's content)."""
    token_file: str = ""
    """File holding the bearer token this client sends."""

    # -- operations (metafs/ops) --
    metrics_port: int = 0
    """Port `metafs serve` exposes Prometheus metrics on (0: none)."""
    metrics_listen: str = "127.0.0.1"
    """Address the metrics endpoint binds."""
    quota_enabled: bool = True
    """Enforce directory quotas set with `metafs quota set`."""

    def with_(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    @property
    def effective_db_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{Path(self.data_dir) / 'meta.db'}"

    def existing_db_url(self) -> str:
        """:attr:`effective_db_url` for a tool that works on a file system which must
        already exist (fsck, gc, quota): an embedded one whose database file is
        missing is refused rather than created empty, which would make a mistyped
        ``--data`` look like a healthy, empty file system."""
        url = self.effective_db_url
        if not self.db_url and not (Path(self.data_dir) / "meta.db").exists():
            raise FileNotFoundError(errno.ENOENT, "no metafs file system here (its meta.db "
                                    "does not exist; a mount or `metafs serve` creates one)",
                                    str(self.data_dir))
        return url

    @property
    def blocks_fsync(self) -> bool:
        """Whether a local block store fsyncs its blocks (``block_fsync``)."""
        v = str(self.block_fsync).strip().lower()
        if v in ("auto", ""):
            embedded_sqlite = not self.namenode and self.effective_db_url.startswith("sqlite")
            return not (embedded_sqlite and self.sqlite_synchronous.upper() in ("OFF", "NORMAL"))
        return v in ("1", "true", "yes", "on")

    @property
    def effective_search_dir(self) -> str:
        return self.search_dir or str(Path(self.data_dir) / "search")

    @property
    def effective_blocks_url(self) -> str:
        if self.blocks_url:
            return self.blocks_url
        return (Path(self.data_dir) / "blocks").as_uri()


_FIELDS = {f.name: f for f in fields(Settings)}

# Files a config file may name relative to its own directory (so that a directory written
# by `metafs auth init` works wherever it is copied).
_RELATIVE_FILES = frozenset({"tls_cert", "tls_key", "tls_ca", "tls_client_cert",
                             "tls_client_key", "auth_file", "token_file"})


def _coerce(name: str, value: Any) -> Any:
    f = _FIELDS[name]
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        return str(value).lower() in ("1", "true", "yes", "on")
    return str(value)


def config_file_path(explicit: str | None = None,
                     environ: Mapping[str, str] | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = (os.environ if environ is None else environ).get("METAFS_CONFIG")
    if env:
        return Path(env)
    p = Path(platformdirs.user_config_dir("metafs", appauthor=False)) / "config.toml"
    return p if p.exists() else None


def load(
    config_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, the config file, METAFS_* variables and flags."""
    values: dict[str, Any] = {}
    path = config_file_path(config_file, environ)
    if path is not None:
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "metafs config file does not exist", str(path))
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        for key, value in data.items():
            key = key.replace("-", "_")
            if key not in _FIELDS:
                raise ValueError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(key, value)
            if key in _RELATIVE_FILES and values[key] and not os.path.isabs(values[key]):
                values[key] = str(path.resolve().parent / values[key])
    env = os.environ if environ is None else environ
    for name in _FIELDS:
        var = "METAFS_" + name.upper()
        if var in env:
            values[name] = _coerce(name, env[var])
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in _FIELDS:
            raise ValueError(f"unknown setting {key!r}")
        values[key] = _coerce(key, value)
    return Settings(**values)
