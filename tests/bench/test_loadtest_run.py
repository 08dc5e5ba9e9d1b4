"""The load test's verdict and figures, on a scripted server (no `langgraph dev`)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from loadtest import run as load


class ScriptedServer:
    """Answers the SDK calls a load-test client makes: each run ends in a given status."""

    def __init__(self, statuses: list[str]) -> None:
        self.statuses = statuses
        self.ended: dict[str, str] = {}

    def client(self, **kwargs: Any) -> Any:
        server = self

        class Threads:
            async def create(self) -> dict[str, str]:
                thread_id = str(uuid.uuid4())
                server.ended[thread_id] = server.statuses[len(server.ended)]
                return {"thread_id": thread_id}

            async def get_state(self, thread_id: str) -> dict[str, Any]:
                return {"values": {"status": server.ended[thread_id], "reason": "scripted"}}

        class Runs:
            async def wait(self, thread_id: str, graph: str, **kwargs: Any) -> dict[str, Any]:
                return {"status": server.ended[thread_id]}

        class Client:
            threads = Threads()
            runs = Runs()

            async def __aenter__(self) -> Client:
                return self

            async def __aexit__(self, *exc: object) -> None:
                return None

        return Client()

    async def check_database(
        self, database_uri: str, records: list[load.RunRecord]
    ) -> tuple[dict[str, int], int, list[str], list[str], list[str], list[str]]:
        statuses: dict[str, int] = {}
        for status in self.ended.values():
            statuses[status] = statuses.get(status, 0) + 1
        return statuses, 0, [], [], [], []


async def test_a_run_that_ends_failed_is_an_error_and_not_throughput(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "failed" is the agent giving up on a run (a budget stop before any plan): it reached
    # an end state, but the load test must not count it as a finished run nor pass.
    server = ScriptedServer(["completed", "failed", "escalated", "refused"])
    monkeypatch.setattr(load, "get_client", server.client)
    monkeypatch.setattr(load, "check_database", server.check_database)

    report = await load.run_load(
        "http://scripted",
        "scripted",
        ["INV-1", "INV-2", "INV-3", "INV-4"],
        clients=1,
        runs_per_client=4,
        deadline_s=30,
    )

    assert report.statuses == {"completed": 1, "failed": 1, "escalated": 1, "refused": 1}
    assert not report.ok
    assert len(report.errors) == 1 and "INV-2" in report.errors[0]
    assert "failed" in report.errors[0]
    assert report.throughput_runs_per_s == pytest.approx(3 / report.wall_clock_s)
    assert [r.status for r in report.records] == ["completed", "failed", "escalated", "refused"]


async def test_runs_that_end_as_the_agent_decided_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ScriptedServer(["completed", "escalated", "refused"])
    monkeypatch.setattr(load, "get_client", server.client)
    monkeypatch.setattr(load, "check_database", server.check_database)

    report = await load.run_load(
        "http://scripted", "scripted", ["A", "B", "C"], clients=3, runs_per_client=1, deadline_s=30
    )

    assert report.ok, report.summary()
    assert report.requests == 3 and report.latency_p95_s >= report.latency_p50_s >= 0
    assert report.throughput_runs_per_s == pytest.approx(3 / report.wall_clock_s)
