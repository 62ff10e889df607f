"""Search through a client: the namenode's ``Search`` call and its results.

Every client searches the same way, embedded or remote: it sends a ``Search`` call and
the namenode answers from the index that follows its changelog (:mod:`metafs.cdc.search`
keeps that index and serves the call), leaving out what the caller may not see.
"""

from __future__ import annotations

import errno
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import FsError
from ..proto import metafs_pb2 as pb

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "QueryError", "SearchResult", "check_paging",
           "search"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


class QueryError(ValueError):
    """A malformed query; ``pos`` is the character offset of the problem."""

    errno: int = errno.EINVAL

    def __init__(self, message: str, query: str = "", pos: int = 0) -> None:
        self.message = message
        self.query = query
        self.pos = pos
        super().__init__(self.render())

    def render(self) -> str:
        if not self.query:
            return self.message
        return f"{self.message} (at column {self.pos + 1})\n  {self.query}\n  {' ' * self.pos}^"


@dataclass
class SearchResult:
    """The documents that matched, in order, with the index position they reflect."""

    query: str
    hits: list[dict[str, Any]]
    position: int
    """The changelog position the index had applied when the query ran."""
    total: int | None = None
    """How many documents match in all (when asked for with ``count=True``)."""
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    took_ms: float = 0.0
    waited_for: int | None = None
    """With ``wait``: the changelog head the index caught up with before answering."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def paths(self) -> list[str]:
        return [h["path"] for h in self.hits]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=str)


def check_paging(limit: int, offset: int) -> None:
    if not isinstance(limit, int) or limit < 0 or limit > MAX_LIMIT:
        raise QueryError(f"limit must be a whole number from 0 to {MAX_LIMIT}")
    if not isinstance(offset, int) or offset < 0:
        raise QueryError("offset must be a whole number >= 0")


def search(client: Any, query: str, *, limit: int = DEFAULT_LIMIT, offset: int = 0,
           sort: str | None = None, wait: bool = False, count: bool = False,
           timeout: float | None = None) -> SearchResult:
    """Ask ``client``'s namenode (its Search call) for the files matching ``query``.

    With ``wait``, the namenode first reads its changelog head and waits (up to
    ``timeout`` seconds, else its ``search_wait_timeout``) until the index has applied it:
    every change committed before the call is reflected (read-your-writes). A malformed
    query raises :class:`QueryError` (EINVAL); an index that cannot catch up in time,
    :class:`TimeoutError`; a namenode with no index, OSError EOPNOTSUPP.
    """
    check_paging(limit, offset)
    req = pb.SearchRequest(caller=client.caller, query=query, limit=limit, offset=offset,
                           sort=sort or "", count=count, wait=wait,
                           timeout_ms=int((timeout or 0) * 1000))
    try:
        rep = client.transport.call("Search", req)
    except FsError as err:
        if err.errno == errno.EINVAL and err.message.startswith("bad query: "):
            raise QueryError(err.message[len("bad query: "):]) from None
        if err.errno == errno.ETIMEDOUT:
            raise TimeoutError(err.message) from None
        raise err.to_oserror() from None
    res = SearchResult(query=query, hits=[json.loads(h.doc_json) for h in rep.hits],
                       position=rep.position, total=None if rep.total < 0 else rep.total,
                       limit=limit, offset=offset, took_ms=rep.took_ms,
                       waited_for=rep.waited_for if wait else None)
    res.extra.update(hidden=rep.hidden, next_offset=rep.next_offset)
    return res
