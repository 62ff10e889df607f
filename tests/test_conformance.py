"""The conformance suite (:class:`metafs.testing.EngineTests`) on every engine this
project ships: SQLite and PostgreSQL, each on both transports (in-process, gRPC)."""

from __future__ import annotations

import pytest

from metafs.config import Settings
from metafs.testing import EngineTests


class TestSqlite(EngineTests):
    @pytest.fixture
    def engine_settings(self, settings: Settings) -> Settings:
        return settings


class TestPostgres(EngineTests):
    @pytest.fixture
    def engine_settings(self, settings: Settings, pg_url: str) -> Settings:
        return settings.with_(db_url=pg_url)
