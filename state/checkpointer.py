"""The Postgres checkpointer, as the CLI uses it and as `langgraph.json` names it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from state.db import default_database, migrate


@asynccontextmanager
async def postgres_checkpointer(uri: str | None = None) -> AsyncIterator[AsyncPostgresSaver]:
    """Yield an `AsyncPostgresSaver` over the shared pool, migrating once on entry."""
    database = default_database()
    await migrate(uri or database.uri)
    pool = await database.pool()
    yield AsyncPostgresSaver(pool)


@asynccontextmanager
async def checkpointer() -> AsyncIterator[AsyncPostgresSaver]:
    """Checkpointer factory named in `langgraph.json` so `langgraph dev` persists to Postgres."""
    async with postgres_checkpointer() as saver:
        yield saver
