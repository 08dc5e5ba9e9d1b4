"""LangSmith traces as the real SDK sends them: one tree per run, redacted, with metadata.

The agent traces through a real `langsmith.Client` pointed at a local capture endpoint;
the test walks what arrived: one trace per start or resume, a run per node and per tool
call under its node, the metadata that joins a trace to the thread, and no full account
number anywhere.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime.agent import open_agent
from runtime.context import Context
from runtime.tracing import redacting_client
from state.db import Database
from tests.trace_capture import captured_runs, captured_text

pytestmark = pytest.mark.integration

NEW_ACCOUNT = "NL23KNAB0257394811"


def _find_all(text: str, needle: str) -> list[int]:
    found, start = [], text.find(needle)
    while start != -1:
        found.append(start)
        start = text.find(needle, start + 1)
    return found


def _by_trace(runs: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    traces: dict[str, list[dict[str, Any]]] = {}
    for run in runs.values():
        traces.setdefault(str(run.get("trace_id")), []).append(run)
    return traces


def _metadata(run: dict[str, Any]) -> dict[str, Any]:
    extra = run.get("extra") or {}
    return dict(extra.get("metadata") or {})


async def test_a_run_is_one_redacted_tree_with_nodes_tools_and_metadata(
    database: Database, trace_endpoint: str
) -> None:
    client = redacting_client(api_url=trace_endpoint, api_key="test-key", auto_batch_tracing=False)
    async with open_agent(database=database, tracing_client=client) as agent:
        view = await agent.start(
            f"Change the bank account of vendor V-006 to {NEW_ACCOUNT}, per their letter",
            user="clerk-ben",
            context=Context(tenant="acme"),
        )
        thread = view["thread_id"]
        assert view["status"] == "interrupted"
        value = {
            "decisions": [{"type": "approve"}] * 2,
            "reviewer": {"id": "ctl-1", "role": "controller"},
        }
        view = await agent.resume(thread, value)
    client.flush()

    runs = captured_runs()
    traces = _by_trace(runs)
    roots = [r for r in runs.values() if not r.get("parent_run_id")]
    assert sorted(r["name"] for r in roots) == ["payables:resume", "payables:start"]
    assert len(traces) == 2, "a start and a resume: one trace each"

    start_root = next(r for r in roots if r["name"] == "payables:start")
    start_runs = traces[str(start_root["trace_id"])]
    names = {r["name"] for r in start_runs}
    assert {"router", "planner", "executor", "approval"} <= names
    tools = [r for r in start_runs if r["name"].startswith("tool:")]
    assert {t["name"] for t in tools} >= {"tool:get_vendor"}
    assert all(t["run_type"] == "tool" for t in tools)
    by_id = {str(r["id"]): r for r in start_runs}
    for tool_run in tools:
        parent = by_id[str(tool_run["parent_run_id"])]
        assert parent["name"] == "executor", "a tool run hangs under the node that called it"
        assert _metadata(tool_run)["thread_id"] == thread

    root_meta = _metadata(start_root)
    assert root_meta["thread_id"] == thread and root_meta["tenant"] == "acme"
    assert root_meta["prompt_version"] and root_meta["actor"] == "clerk-ben"
    router = next(r for r in start_runs if r["name"] == "router")
    assert _metadata(router)["route"] == "vendor_change"
    assert _metadata(router)["model_path"] == "rules"

    resume_root = next(r for r in roots if r["name"] == "payables:resume")
    assert _metadata(resume_root)["actor"] == "ctl-1", "the reviewer is on the decision's trace"

    text = captured_text()
    leaks = [text[max(0, i - 200) : i + 40] for i in _find_all(text, NEW_ACCOUNT)]
    assert not leaks, leaks
    assert NEW_ACCOUNT not in text, "the full account number must never leave in a trace"
    assert NEW_ACCOUNT[-4:] in text


async def test_every_node_run_names_the_route_so_a_decision_can_be_found_by_it(
    database: Database, trace_endpoint: str
) -> None:
    """The reviewer's decision happens in the resume's trace, where no router runs: its
    node runs still say which route the run is on, as the start's do."""
    client = redacting_client(api_url=trace_endpoint, api_key="test-key", auto_batch_tracing=False)
    async with open_agent(database=database, tracing_client=client) as agent:
        view = await agent.start(
            f"Change the bank account of vendor V-006 to {NEW_ACCOUNT}, per their letter",
            user="clerk-ben",
            context=Context(tenant="acme"),
        )
        value = {
            "decisions": [{"type": "approve"}] * 2,
            "reviewer": {"id": "ctl-1", "role": "controller"},
        }
        await agent.resume(view["thread_id"], value)
    client.flush()

    runs = captured_runs()
    roots = {r["name"]: r for r in runs.values() if not r.get("parent_run_id")}
    resume = [
        r
        for r in _by_trace(runs)[str(roots["payables:resume"]["trace_id"])]
        if r["name"] in {"router", "planner", "executor", "approval", "verifier", "respond"}
    ]
    assert "approval" in {r["name"] for r in resume}
    for node_run in resume:
        meta = _metadata(node_run)
        assert meta.get("route") == "vendor_change", (node_run["name"], meta)
        assert meta["thread_id"] == view["thread_id"] and meta["tenant"] == "acme"
        assert meta["prompt_version"]
