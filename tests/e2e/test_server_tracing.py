"""LangSmith traces of runs on the LangGraph server are redacted like the CLI's.

The server traces each run through langsmith's process-wide client, not through the CLI's
`runtime.tracing.traced`. The real `langgraph dev` runs here with tracing on and its
LangSmith endpoint at a local capture server; the bank account a clerk types into a
request must not leave in full, and every node run says the tenant, the route and the
prompt version, so a decision on the server can be found like one on the CLI.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from langgraph_sdk import get_client

from runtime.prompts import PROMPT_VERSION
from runtime.tracing import TRACING_ENABLED_BY
from tests.langgraph_server import langgraph_dev, server_env
from tests.trace_capture import captured_runs, captured_text

pytestmark = pytest.mark.e2e

NEW_ACCOUNT = "NL23KNAB0257394811"
TOKENS = {"clerk-ben-token": {"identity": "clerk-ben", "role": "clerk", "tenant": "acme"}}


async def _node_runs(thread_id: str, nodes: set[str]) -> list[dict[str, Any]]:
    """The captured runs of ``nodes`` in the thread's trace, once they all have arrived.

    The server's client sends runs in the background: wait for them (bounded).
    """
    for _ in range(120):
        runs = [
            r
            for r in captured_runs().values()
            if r.get("name") in nodes
            and (r.get("extra") or {}).get("metadata", {}).get("thread_id") == thread_id
            and r.get("end_time")
        ]
        if {r["name"] for r in runs} >= nodes:
            return runs
        await asyncio.sleep(0.5)
    seen = sorted({str(r.get("name")) for r in captured_runs().values()})
    raise AssertionError(f"node runs {sorted(nodes)} never arrived; captured: {seen}")


# Each: the variables that turn tracing on (the others unset). langsmith reads the V2 names
# first: with LANGSMITH_TRACING=false beside
# LANGCHAIN_TRACING_V2=true it traced, and the server's client went unredacted.
SWITCHED_ON_BY = {
    "LANGSMITH_TRACING": {"LANGSMITH_TRACING": "true", "LANGCHAIN_TRACING_V2": "true"},
    "LANGCHAIN_TRACING_V2 over LANGSMITH_TRACING=false": {
        "LANGSMITH_TRACING": "false",
        "LANGCHAIN_TRACING_V2": "true",
    },
}


@pytest.mark.parametrize("switch", list(SWITCHED_ON_BY))
async def test_server_traces_are_redacted_and_name_tenant_route_and_prompt_version(
    cli_env: dict[str, str], db_uri: str, tmp_path: Path, trace_endpoint: str, switch: str
) -> None:
    env = server_env(
        cli_env,
        db_uri,
        PAYABLES_AUTH_TOKENS=json.dumps(TOKENS),
        **SWITCHED_ON_BY[switch],
        LANGSMITH_ENDPOINT=trace_endpoint,
        LANGSMITH_PROJECT="payables-e2e",
    )
    for unset in set(TRACING_ENABLED_BY) - set(SWITCHED_ON_BY[switch]):
        del env[unset]
    with langgraph_dev(env, tmp_path) as url:
        async with get_client(
            url=url, api_key=None, timeout=60, headers={"Authorization": "Bearer clerk-ben-token"}
        ) as clerk:
            thread_id = (await clerk.threads.create())["thread_id"]
            request = f"Change the bank account of vendor V-006 to {NEW_ACCOUNT}, per their letter"
            await clerk.runs.wait(
                thread_id, "payables", input={"request": request, "user": "clerk-ben"}
            )
        runs = await _node_runs(thread_id, {"router", "planner", "executor", "approval"})

    text = captured_text()
    assert NEW_ACCOUNT not in text and NEW_ACCOUNT.lower() not in text
    assert "4811" in text  # masked to its last four, not dropped
    for run in runs:
        metadata = run["extra"]["metadata"]
        assert metadata.get("tenant") == "acme", (run["name"], metadata)
        assert metadata.get("route") == "vendor_change", (run["name"], metadata)
        assert metadata.get("prompt_version") == PROMPT_VERSION, (run["name"], metadata)
