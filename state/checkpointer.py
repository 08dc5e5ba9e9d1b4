"""The Postgres checkpointer, as the CLI uses it and as `langgraph.json` names it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from state.db import check_held_thread_lock, default_database, migrate
from state.graph_state import request_already_held


class ThreadLockedSaver(AsyncPostgresSaver):
    """An `AsyncPostgresSaver` that saves no new request over the one a thread holds.

    Nor anything more for a run whose thread lock died.

    The graph's steps check the lock as they start (`graphs.payables.checks_thread_lock`);
    a step that was running when the lock died still ends in a checkpoint write, which
    would land beside (or after) the checkpoints of a process that took the thread over.

    New input is saved as a checkpoint of its own before the router, which refuses it on a
    routed thread, runs. Saved, it would have become the thread's latest checkpoint: on a
    thread paused for approval, the approval was gone and every answer ran the router
    again, which refused again. The server admits a second request sent while the first
    still waits in its queue (nothing of the first is saved yet for `server.auth` to see),
    so this is where it is refused with nothing written.
    """

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Check the run's thread lock and that new input starts a request, then save."""
        thread_id = config["configurable"].get("thread_id")
        check_held_thread_lock(thread_id)
        route = checkpoint["channel_values"].get("route")
        if metadata.get("source") == "input" and route:
            raise request_already_held(thread_id, str(route))
        return await super().aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Check the run's thread lock, then save a step's writes."""
        check_held_thread_lock(config["configurable"].get("thread_id"))
        await super().aput_writes(config, writes, task_id, task_path)


@asynccontextmanager
async def postgres_checkpointer(uri: str | None = None) -> AsyncIterator[AsyncPostgresSaver]:
    """Yield a `ThreadLockedSaver` over the shared pool, migrating once on entry."""
    database = default_database()
    await migrate(uri or database.uri)
    pool = await database.pool()
    yield ThreadLockedSaver(pool)


@asynccontextmanager
async def checkpointer() -> AsyncIterator[AsyncPostgresSaver]:
    """Checkpointer factory named in `langgraph.json` so `langgraph dev` persists to Postgres."""
    async with postgres_checkpointer() as saver:
        yield saver
