"""Request ids: a mutation retried after its namenode went away runs at most once.

A remote client names every call with a random request id, the same on each of its
attempts (``CallFrame.request_id``, or the ``metafs-request-id`` metadata of a unary call).
While a handler runs a call that may change something, :data:`REQUEST` holds its
:class:`Scope`; each write transaction the handler makes (``Namespace.mutate``) then also
records, in the same transaction, the transaction's result under (request id, its index
within the call). A retry (attempt > 0) looks there first: a transaction its first attempt
committed is not run again, the handler gets the recorded result instead and answers what
the first attempt would have answered (a retried mkdir whose first attempt committed
returns the new directory, not EEXIST). The primary key makes two attempts racing on two
namenodes commit at most one of them.

A write whose database connection is lost, or whose COMMIT's fate is unknown, raises
:class:`DatabaseUnavailable` inside a scope: the server answers UNAVAILABLE and the client
retries, and the retry learns from the record whether the first commit happened.

Records are kept ``request_retention`` seconds (pruned with the session reclaim), far
longer than a client retries (``failover_timeout``).
"""

from __future__ import annotations

import contextvars
import io
import logging
import pickle
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from google.protobuf.message import Message
from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import DBAPIError, OperationalError

from ..errors import FsError
from ..proto import metafs_pb2 as pb
from . import schema

if TYPE_CHECKING:
    from ..posix import Cred
    from .namespace import Namespace
    from .rows import Tx

log = logging.getLogger("metafs.namenode")

T = TypeVar("T")
R = schema.requests

# The calls whose handlers may write; reads carry request ids too but record nothing.
MUTATIONS = frozenset({
    "Create", "Mkdir", "Unlink", "Rmdir", "Rename", "Link", "Symlink", "SetAttr",
    "SetXattr", "RemoveXattr", "Open", "Release", "Write", "CommitBlocks", "BulkCreate",
    "Lock", "RecordRun", "RecordAccess"})

MAX_ID = 64
_MISSING: Any = object()

_Q_STORED = select(R.c.idx, R.c.owner, R.c.result).where(R.c.id == bindparam("rid"))


class DatabaseUnavailable(Exception):
    """The metadata database could not be reached (or a COMMIT's outcome is unknown): the
    caller should retry the call, under the same request id."""


@dataclass
class Scope:
    """One call of a client (all attempts share ``rid``) while its handler runs."""

    rid: str
    retry: bool
    n: int = 0   # write transactions of this attempt so far
    _stored: dict[int, tuple[str, bytes]] | None = field(default=None, repr=False)


REQUEST: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "metafs_request", default=None)


class _Scoped:
    """The context a handler of a mutation runs in: :data:`REQUEST` holds its scope."""

    __slots__ = ("_scope", "_token")

    def __init__(self, sc: Scope) -> None:
        self._scope = sc

    def __enter__(self) -> None:
        self._token = REQUEST.set(self._scope)

    def __exit__(self, *exc: object) -> None:
        REQUEST.reset(self._token)


_UNSCOPED: AbstractContextManager[None] = nullcontext()


def scope(method: str, rid: str, attempt: int) -> AbstractContextManager[None]:
    """Run a handler of ``method`` as attempt ``attempt`` of call ``rid`` (no-op for calls
    that write nothing, or without an id). A class rather than a generator: every call
    of a namenode enters one."""
    if not rid or method not in MUTATIONS or len(rid) > MAX_ID:
        return _UNSCOPED
    return _Scoped(Scope(rid, attempt > 0))


def _message(name: str, data: bytes) -> Message:
    return getattr(pb, name).FromString(data)


class _Pickler(pickle.Pickler):
    """Pickles protobuf messages (their gencode module cannot be imported by its name)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Message):
            return _message, (type(obj).__name__, obj.SerializeToString())
        return NotImplemented


def _dumps(result: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(result)
    return buf.getvalue()


def _load(ns: "Namespace", sc: Scope) -> dict[int, tuple[str, bytes]]:
    def fn(conn: Any) -> dict[int, tuple[str, bytes]]:
        return {r.idx: (r.owner, r.result)
                for r in conn.execute(_Q_STORED, {"rid": sc.rid})}

    return ns.engine.read(fn)


def _recorded(ns: "Namespace", sc: Scope, idx: int, cred: "Cred") -> Any:
    """What transaction ``idx`` of the call committed earlier, or _MISSING."""
    sc._stored = _load(ns, sc)
    hit = sc._stored.get(idx)
    if hit is None or hit[0] != cred.identity:  # another identity's id names nothing here
        return _MISSING
    log.info("request %s: transaction %d committed by an earlier attempt; answering from it",
             sc.rid, idx)
    return pickle.loads(hit[1])


def lost_database(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a lost or refused connection to the metadata
    database (a server restarting, shutting down, or not there), not a failed statement."""
    for e in (exc, exc.__cause__):
        if isinstance(e, DBAPIError):
            if e.connection_invalidated:
                return True
            orig, operational = e.orig, isinstance(e, OperationalError)
        elif type(e).__module__.startswith("psycopg"):
            # a statement run on a raw driver connection (the one-statement read path)
            orig, operational = e, type(e).__name__ == "OperationalError"
        else:
            continue
        state = getattr(orig, "sqlstate", None)
        if state and (state.startswith("08") or state in ("57P01", "57P02", "57P03")):
            return True
        if state is None and operational and type(orig).__module__.startswith("psycopg"):
            return True  # could not connect at all, or the server went away mid-statement
    return False


def once(ns: "Namespace", cred: "Cred", fn: Callable[["Tx"], T], sc: Scope,
         run: Callable[[Callable[["Tx", Any], dict[str, Any] | None] | None], T]) -> T:
    """Write transaction number ``sc.n`` of call ``sc``: ``run(record)`` commits it, unless
    an earlier attempt did; ``record(tx, result)`` gives the ``requests`` row (or None
    for a result that cannot be kept) that ``run`` writes in the same transaction."""
    idx = sc.n
    sc.n += 1
    if sc.retry:
        got = _recorded(ns, sc, idx, cred)
        if got is not _MISSING:
            return got

    def record(tx: "Tx", result: Any) -> dict[str, Any] | None:
        try:
            blob = _dumps(result)
        except Exception:  # a result that cannot be kept: the call is not deduplicated
            log.warning("request %s: the result of %r cannot be recorded", sc.rid, fn)
            return None
        return dict(id=sc.rid, idx=idx, owner=cred.identity, result=blob, created_ns=tx.now)

    try:
        return run(record)
    except Exception as exc:
        # the first attempt may have committed meanwhile (on another namenode), or this
        # one's COMMIT may have been lost: the record says which
        if sc.retry or not isinstance(exc, FsError):
            try:
                got = _recorded(ns, sc, idx, cred)
            except DBAPIError as again:
                if lost_database(again):
                    raise DatabaseUnavailable(str(again)) from again
                raise
            if got is not _MISSING:
                return got
        if lost_database(exc):
            raise DatabaseUnavailable(str(exc)) from exc
        raise


def prune(ns: "Namespace", retention: float) -> int:
    """Forget records older than ``retention`` seconds; returns how many."""
    cutoff = time.time_ns() - int(retention * 1e9)
    return ns.engine.write(
        lambda conn: conn.execute(delete(R).where(R.c.created_ns < cutoff)).rowcount)
