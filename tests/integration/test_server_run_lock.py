"""The lock a LangGraph server run holds (`graphs.payables.server_run_lock`), in process.

It is the lock `payables` runs take, so the maintenance commands see a server run as they
see a CLI run; `tests/e2e/test_server_thread_lock.py` shows it on a real server.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from time import monotonic

import pytest

from graphs.payables import ThreadBusy, server_run_lock
from runtime.agent import open_agent
from runtime.errors import BadInput, ResumeError
from state.db import Database
from state.retention import prune
from state.world import SAMPLE_WORLD_PATH, load_world, read_world

pytestmark = pytest.mark.integration


async def test_maintenance_commands_see_a_server_run(database: Database) -> None:
    async with open_agent(database=database) as agent:
        done = (await agent.start("Validate INV-1002", user="clerk-ana"))["thread_id"]
        async with server_run_lock(database, done):
            with pytest.raises(ResumeError, match="being run by another process"):
                await agent.continue_run(done)
            report = await prune(
                database,
                agent.graph,
                older_than_days=1,
                now=datetime.now(UTC) + timedelta(days=2),
                lock=lambda thread: agent.thread_lock(thread, "busy"),
            )
            assert [(t.thread_id, t.kept_because) for t in report.kept] == [
                (done, "a run on it is in progress right now")
            ]
            async with database.connection() as conn:
                with pytest.raises(BadInput, match="1 run is in progress"):
                    await load_world(conn, read_world(SAMPLE_WORLD_PATH))
        assert (await agent.view(done))["status"] == "completed"


async def test_a_server_run_waits_for_the_lock_then_gives_up(database: Database) -> None:
    async with open_agent(database=database) as agent:
        async with agent.thread_lock("t-busy", "busy"):
            began = monotonic()
            with pytest.raises(
                ThreadBusy, match=r"still busy after 0\.5 s, so nothing was run or written"
            ):
                async with server_run_lock(database, "t-busy", wait_s=0.5):
                    pytest.fail("ran while another process held the thread")
            assert monotonic() - began >= 0.5
        async with server_run_lock(database, "t-busy", wait_s=0.5):
            # Held: a `payables` run on the thread is refused meanwhile.
            with pytest.raises(ResumeError, match="busy"):
                async with agent.thread_lock("t-busy", "busy"):
                    pass
        async with agent.thread_lock("t-busy", "busy"):
            pass  # and let go once the run ends
