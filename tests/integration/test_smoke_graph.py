"""The graph on a real Postgres, in-process: the shortest paths through every route."""

from __future__ import annotations

import pytest

from runtime.agent import open_agent
from state.db import Database

pytestmark = pytest.mark.integration


async def test_clean_invoice_without_payment_is_staged(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana")
    assert view["status"] == "completed"
    assert view["route"] == "invoice_processing"
    assert view["result"]["invoices"]["INV-1002"]["actions"] == ["staged"]
    assert view["pending_approvals"] == []


async def test_out_of_scope_is_refused(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start("Book me a flight to Denver", user="clerk-ana")
    assert view["status"] == "refused"
    assert view["route"] == "out_of_scope"
