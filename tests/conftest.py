"""Shared fixtures: real SQLite files, a real PostgreSQL server, real namenodes.

PostgreSQL comes from METAFS_TEST_PG_URL when it is set, else from a throwaway server
started with pgserver for the test session; every test gets a database of its own.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from metafs.assembly import build_namenode, serve_grpc
from metafs.client import Client
from metafs.config import Settings, load
from metafs.namenode.server import GrpcServer, Namenode
from metafs.testing.engine import TRANSPORTS, ClientFactory

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get("METAFS_TEST_PG_URL")
    if url:
        yield url
        return
    pgserver = pytest.importorskip("pgserver")
    # pgserver refuses paths that are too long for a unix socket: keep it short.
    d = tempfile.mkdtemp(prefix="mfpg")
    srv = pgserver.get_server(d, cleanup_mode="stop")
    try:
        yield srv.get_uri()
    finally:
        try:
            srv.cleanup()
        except Exception:
            pass
        shutil.rmtree(d, ignore_errors=True)


def _with_db(url: str, db: str) -> str:
    """The same server URL naming another database (keeps the query, e.g. host=socket)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=db).render_as_string(hide_password=False)


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the test PostgreSQL server."""
    with pg_database(pg_server_url) as url:
        yield url


@contextlib.contextmanager
def pg_database(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the test PostgreSQL server, dropped on leaving (for
    fixtures that outlive one test: ``pg_url`` is per test)."""
    import psycopg

    name = f"mfs_{os.getpid()}_{next(_db_counter)}_{uuid.uuid4().hex[:6]}"
    admin = _with_db(pg_server_url, "postgres").replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(pg_server_url, name)
    finally:
        try:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception:
            pass


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for an embedded namenode in a fresh data directory (SQLite)."""
    return load(overrides={"data_dir": str(tmp_path / "data"), "listen": "127.0.0.1:0"},
                environ={})


def start_namenode(settings: Settings) -> tuple[Namenode, GrpcServer]:
    nn = build_namenode(settings)
    return nn, serve_grpc(nn, "127.0.0.1:0")


ENGINES = ["sqlite", "postgres"]


@pytest.fixture(params=ENGINES)
def engine_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """Settings for a fresh namenode on each engine: a SQLite file, or a PostgreSQL
    database of its own."""
    if request.param == "postgres":
        return settings.with_(db_url=request.getfixturevalue("pg_url"))
    return settings


@pytest.fixture
def engine_namenode(engine_settings: Settings) -> Iterator[Namenode]:
    """A namenode (no gRPC server, no background work) on each engine."""
    node = build_namenode(engine_settings, background=False)
    try:
        yield node
    finally:
        node.close()


@pytest.fixture(params=[(e, t) for e in ENGINES for t in TRANSPORTS],
                ids=lambda p: f"{p[0]}-{p[1]}")
def fs_factory(request: pytest.FixtureRequest, settings: Settings) -> Iterator[ClientFactory]:
    """Make clients (several may share one namenode) on every engine and transport."""
    engine, transport = request.param
    s = settings
    if engine == "postgres":
        s = s.with_(db_url=request.getfixturevalue("pg_url"))
    with ClientFactory(s, transport) as make:
        yield make


@pytest.fixture
def fs(fs_factory: ClientFactory) -> Client:
    return fs_factory()
