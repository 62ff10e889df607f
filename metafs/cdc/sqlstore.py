"""The consumers' SQL stores over SQLite or PostgreSQL: where the two databases differ
(connection setup, transactions, planner statistics), so a store's own code does not.

Used by the provenance store (SQLAlchemy); the embedded search index is a SQLite file of
its own. A row a store reads to update it in the same transaction is read with
``select(...).with_for_update()`` on either database: SQLAlchemy renders ``FOR UPDATE`` on
PostgreSQL and nothing on SQLite, where the writer's ``BEGIN IMMEDIATE`` already holds the
database's write lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine


def open_engines(url: str) -> tuple[Engine, Engine]:
    """The (writer, reader) engines of the database at ``url``. On SQLite (WAL mode) the
    writer takes the write lock at BEGIN, so two appliers never deadlock on a lock
    upgrade, and the reader is a second engine whose reads never wait for it; on
    PostgreSQL both are one engine."""
    writer = _make_engine(url, immediate=True)
    return writer, (_make_engine(url) if _is_sqlite(url) else writer)


def drop_statistics(engine: Engine, table: str) -> None:
    """Forget the planner statistics SQLite's ANALYZE kept on ``table`` (PostgreSQL's
    planner needs its own; there this does nothing)."""
    if engine.dialect.name != "sqlite":
        return
    with engine.begin() as c:
        if c.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'"
                             ).first() is not None:
            c.exec_driver_sql("DELETE FROM sqlite_stat1 WHERE tbl = ?", (table,))


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _make_engine(url: str, *, immediate: bool = False) -> Engine:
    if _is_sqlite(url):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        eng = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(eng, "connect")
        def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA cache_size=-131072")
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.close()

        @event.listens_for(eng, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return eng
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return create_engine(url, pool_pre_ping=True)
