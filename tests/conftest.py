"""Shared fixtures: offline guards, a real Postgres, and an isolated database per test.

Tests use `DATABASE_URI` when set, otherwise an embedded Postgres under
`.data/test/`. A template database is migrated and seeded with the sample world once per
session; each test gets its own copy (`CREATE DATABASE ... TEMPLATE`), so tests can
change the world freely and run in any order.
"""

from __future__ import annotations

import os

# Before anything imports langsmith or langchain: tests never reach the network.
for _tracing in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING", "LANGSMITH_TRACING_V2"):
    os.environ[_tracing] = "false"  # every variable langsmith reads (runtime.tracing)
os.environ["LANGCHAIN_TRACING_V2"] = "false"
os.environ["RAGAS_DO_NOT_TRACK"] = "true"
os.environ["LANGGRAPH_CLI_NO_ANALYTICS"] = "1"
os.environ.pop("OPENAI_API_KEY", None)
for _role in ("ROUTER", "PLANNER", "RESPOND"):
    os.environ.pop(f"PAYABLES_{_role}_MODEL", None)
os.environ.pop("PAYABLES_MODEL", None)

import asyncio  # noqa: E402
from collections.abc import AsyncIterator, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import psycopg  # noqa: E402
import pytest  # noqa: E402
from psycopg import sql  # noqa: E402

from runtime.settings import PROJECT_ROOT  # noqa: E402
from state.db import CONNECTION_KWARGS, Database, embedded_uri, migrate  # noqa: E402
from state.world import SAMPLE_WORLD_PATH, load_world, read_world  # noqa: E402
from tests.databases import admin, database_copy, drop_database, with_dbname  # noqa: E402
from tests.trace_capture import trace_endpoint  # noqa: E402, F401  (a fixture)

TEST_DATA_DIR = PROJECT_ROOT / ".data" / "test"


@pytest.fixture(autouse=True)
def _no_real_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to call a real OpenAI model fails the test."""
    from langchain_openai import ChatOpenAI

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a test tried to call a real model")

    monkeypatch.setattr(ChatOpenAI, "_generate", refuse)
    monkeypatch.setattr(ChatOpenAI, "_agenerate", refuse)
    monkeypatch.setattr(ChatOpenAI, "_stream", refuse)
    monkeypatch.setattr(ChatOpenAI, "_astream", refuse)


@pytest.fixture(autouse=True)
def _fresh_breakers_and_no_faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Circuit breakers and injected faults are process-wide; no test inherits another's."""
    from runtime.breakers import BREAKERS

    monkeypatch.delenv("PAYABLES_FAULTS", raising=False)
    BREAKERS.reset()
    yield
    BREAKERS.reset()


@pytest.fixture(scope="session")
def server_uri() -> str:
    """A Postgres server to create test databases on."""
    return os.environ.get("DATABASE_URI") or embedded_uri(TEST_DATA_DIR)


@pytest.fixture(scope="session")
def template_db(server_uri: str) -> Iterator[str]:
    """A database migrated and seeded with the sample world, to copy per test."""
    name = f"payables_tpl_{os.getpid()}"
    drop_database(server_uri, name)
    admin(server_uri, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    uri = with_dbname(server_uri, name)

    async def prepare() -> None:
        await migrate(uri)
        async with await psycopg.AsyncConnection.connect(uri, **CONNECTION_KWARGS) as conn:
            await load_world(conn, read_world(SAMPLE_WORLD_PATH))

    asyncio.run(prepare())
    yield name
    drop_database(server_uri, name)


@pytest.fixture
def db_uri(server_uri: str, template_db: str) -> Iterator[str]:
    """A private copy of the seeded template database for one test."""
    with database_copy(server_uri, template_db, "payables_t") as uri:
        yield uri


@pytest.fixture
async def database(db_uri: str) -> AsyncIterator[Database]:
    """A `Database` on the test's private copy."""
    db = Database(db_uri, max_size=4)
    yield db
    await db.close()


@pytest.fixture
def cli_env(db_uri: str, tmp_path: Path) -> dict[str, str]:
    """Environment for running `payables` in a child process against the test database."""
    env = dict(os.environ)
    env.pop("PAYABLES_DATABASE_URI", None)  # it would win over DATABASE_URI
    env["DATABASE_URI"] = db_uri
    env["PAYABLES_DATA_DIR"] = str(tmp_path / "unused-embedded")
    return env
