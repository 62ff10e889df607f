"""Prepared statements for the hot paths.

SQLAlchemy Core builds and caches statements well, but building a statement and computing
its cache key costs more than the query itself for a primary-key lookup. The statements
that every operation runs (inode by id, entry by (parent, name), the changelog append)
are therefore written once in Core, compiled once per dialect, and executed on the
connection's DBAPI cursor. Rows come back as named tuples.
"""

from __future__ import annotations

from collections import namedtuple
from operator import itemgetter
from typing import Any, NoReturn

from sqlalchemy.engine import Connection
from sqlalchemy.sql import Executable


class Prepared:
    """A Core statement compiled once per dialect and run on the raw DBAPI cursor."""

    __slots__ = ("stmt", "_compiled", "row")

    def __init__(self, stmt: Executable) -> None:
        self.stmt = stmt
        self._compiled: dict[str, tuple[str, list[str] | None, dict[str, Any]]] = {}
        cols = getattr(stmt, "selected_columns", None)
        if cols is None:
            ret = getattr(stmt, "_returning", ()) or ()
            names = [c.key for c in ret]
        else:
            names = list(cols.keys())
        self.row = namedtuple("Row", names) if names else None  # type: ignore[misc]

    def _sql(self, conn: Connection) -> tuple[str, list[str] | None, dict[str, Any]]:
        name = conn.dialect.name
        got = self._compiled.get(name)
        if got is None:
            comp = self.stmt.compile(dialect=conn.dialect)
            # literal values in the statement become bind parameters with fixed values
            fixed = {k: v for k, v in comp.params.items() if v is not None}
            got = (str(comp), list(comp.positiontup) if comp.positiontup else None, fixed)
            self._compiled[name] = got
        return got

    def execute(self, conn: Connection, params: dict[str, Any] | None = None) -> Any:
        sql, pos, fixed = self._sql(conn)
        args = {**fixed, **params} if params else fixed
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            if pos is not None:
                cur.execute(sql, tuple(args[k] for k in pos))
            else:
                cur.execute(sql, args)
        except conn.dialect.loaded_dbapi.Error as exc:
            _raise_wrapped(conn, exc, sql, args, cur)
        return cur

    def first(self, conn: Connection, **params: Any) -> Any:
        cur = self.execute(conn, params)
        try:
            r = cur.fetchone()
        finally:
            cur.close()
        if r is None:
            return None
        return self.row(*r) if self.row else r

    def all(self, conn: Connection, **params: Any) -> list[Any]:
        cur = self.execute(conn, params)
        try:
            rows = cur.fetchall()
        finally:
            cur.close()
        return [self.row(*r) for r in rows] if self.row else rows

    def scalar(self, conn: Connection, **params: Any) -> Any:
        r = self.first(conn, **params)
        return None if r is None else r[0]

    def run(self, conn: Connection, **params: Any) -> int:
        """Execute a statement that returns no rows; returns the row count."""
        cur = self.execute(conn, params)
        try:
            return cur.rowcount
        finally:
            cur.close()

    def many(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Execute once per row of parameters (executemany on the driver)."""
        if not rows:
            return
        sql, pos, fixed = self._sql(conn)
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            if pos is not None:
                if fixed:
                    rows = [{**fixed, **r} for r in rows]
                get = itemgetter(*pos)
                cur.executemany(sql, [get(r) for r in rows] if len(pos) > 1
                                else [(get(r),) for r in rows])
            else:
                cur.executemany(sql, [{**fixed, **r} for r in rows] if fixed else rows)
        except conn.dialect.loaded_dbapi.Error as exc:
            _raise_wrapped(conn, exc, sql, rows, cur)
        finally:
            cur.close()


def _raise_wrapped(conn: Connection, exc: BaseException, sql: str, params: Any,
                   cur: Any) -> NoReturn:
    """Raise the driver's error ``exc`` as SQLAlchemy would have for a statement of its own
    (a ``DBAPIError``, the connection invalidated when the error says it is gone), so that
    the engine's retries and its lost-connection handling see the hot paths' statements
    like any other."""
    try:
        cur.close()
    except Exception:  # the connection may be gone with it
        pass
    conn._handle_dbapi_exception(exc, sql, params, None, None)
