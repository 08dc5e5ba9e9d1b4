"""`langgraph dev` serves the payables graph over HTTP with Postgres persistence.

Each test starts the real server as a child process on a free loopback port, against the
test's private database, drives it with `langgraph_sdk`, and checks the database directly:
the payment row, and the `checkpoints` rows that prove the server's checkpointer is the
Postgres one from `langgraph.json` and not its in-memory default.

`langgraph dev` overwrites `DATABASE_URI` with ``:memory:`` inside its process, so the
server is pointed at the test database through `PAYABLES_DATABASE_URI` (see `runtime.settings`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from runtime.settings import PROJECT_ROOT

pytestmark = pytest.mark.e2e

GRAPH_ID = "payables"
REQUEST = "Validate INV-1001 and pay it if it matches"
REQUESTER = "clerk-ana"
STARTUP_DEADLINE_S = 90.0
SHUTDOWN_GRACE_S = 15.0
# No proxy, ever: the server is on loopback and nothing else may be contacted.
_LOCAL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _langgraph_command() -> list[str]:
    script = Path(sys.executable).with_name("langgraph")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "langgraph_cli"]


def _absolute(spec: str) -> str:
    """``./file.py:attr`` from `langgraph.json` as an absolute path into the project."""
    path, _, attr = spec.rpartition(":")
    return f"{(PROJECT_ROOT / path).resolve()}:{attr}"


def _dev_config(workdir: Path) -> Path:
    """The project's `langgraph.json` with its paths made absolute, written to ``workdir``.

    The server runs in ``workdir``, not the project root: `langgraph dev` keeps its thread
    and run index in `./.langgraph_api/` (no setting moves it; `disable_persistence` is
    dropped by the CLI's config validation), and a developer's own `langgraph dev` in the
    checkout reads and rewrites that folder.
    """
    config = json.loads((PROJECT_ROOT / "langgraph.json").read_text())
    config["graphs"] = {name: _absolute(spec) for name, spec in config["graphs"].items()}
    config["checkpointer"]["path"] = _absolute(config["checkpointer"]["path"])
    config["dependencies"] = [str((PROJECT_ROOT / dep).resolve()) for dep in config["dependencies"]]
    path = workdir / "langgraph.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _ok(url: str) -> bool:
    try:
        with _LOCAL_OPENER.open(f"{url}/ok", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:  # URLError, refused, reset, timeout
        return False


def _group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes still in process group ``pgid`` (Linux; else empty)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server's whole process group; SIGKILL whatever outlives the grace."""
    pgid = proc.pid  # start_new_session=True: the child leads its own group
    for sig, grace in ((signal.SIGTERM, SHUTDOWN_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        break
    # Grandchildren (if any) outlive the leader in the same group: sweep them too.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while (left := _group_alive(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"langgraph dev left processes behind: {left}"


@pytest.fixture
def langgraph_server(cli_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """Start `langgraph dev` on a free loopback port; yield its base URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **cli_env,
        "PAYABLES_DATABASE_URI": cli_env["DATABASE_URI"],
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGGRAPH_NO_VERSION_CHECK": "true",  # else it asks pypi.org for a newer version
        "LANGSMITH_TRACING": "false",
        "LANGCHAIN_TRACING_V2": "false",
    }
    for key in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGGRAPH_API_KEY"):
        env.pop(key, None)
    workdir = tmp_path / "server"
    workdir.mkdir()
    command = [
        *_langgraph_command(),
        "dev",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-browser",
        "--no-reload",
        "--config",
        str(_dev_config(workdir)),
    ]
    log_path = tmp_path / "langgraph-dev.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output() -> str:
        return _ANSI.sub("", log_path.read_text(errors="replace"))[-8000:]

    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:
            # langgraph dev silently moves to another port when the one asked for is
            # taken; then whatever answers on ours is not this server.
            if "already in use" in output():
                pytest.fail(f"port {port} was taken before langgraph dev bound it:\n{output()}")
            if _ok(url):
                break
            if proc.poll() is not None:
                pytest.fail(f"langgraph dev exited with {proc.returncode}:\n{output()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"langgraph dev did not answer {url}/ok within {STARTUP_DEADLINE_S:.0f}s:"
                    f"\n{output()}"
                )
            time.sleep(0.25)
        yield url
    finally:
        _stop(proc)


@pytest.fixture
async def client(langgraph_server: str) -> AsyncIterator[LangGraphClient]:
    """An SDK client for the server (no API key: nothing leaves loopback)."""
    async with get_client(url=langgraph_server, api_key=None, timeout=60) as sdk:
        yield sdk


async def _start_until_interrupt(client: LangGraphClient) -> tuple[str, dict[str, Any]]:
    """Create a thread, run the payment request to its approval interrupt."""
    thread = await client.threads.create()
    thread_id = thread["thread_id"]
    # No `context`: the graph's `Context` defaults apply (rules models, default thresholds).
    result = await client.runs.wait(
        thread_id, GRAPH_ID, input={"request": REQUEST, "user": REQUESTER}
    )
    assert isinstance(result, dict)
    assert result.get("__interrupt__"), result
    interrupt = _single_interrupt(await client.threads.get_state(thread_id))
    return thread_id, interrupt


def _single_interrupt(state: Any) -> dict[str, Any]:
    assert state["next"] == ["approval"], state["next"]
    interrupts = state["interrupts"]
    assert len(interrupts) == 1, interrupts
    task_interrupts = [i for task in state["tasks"] for i in task.get("interrupts", [])]
    assert [i["id"] for i in task_interrupts] == [interrupts[0]["id"]]
    interrupt: dict[str, Any] = interrupts[0]
    return interrupt


def _assert_payment_request(payload: dict[str, Any]) -> None:
    assert [a["name"] for a in payload["action_requests"]] == ["schedule_payment"]
    assert payload["action_requests"][0]["args"]["invoice_id"] == "INV-1001"
    assert [c["action_name"] for c in payload["review_configs"]] == ["schedule_payment"]
    assert "approve" in payload["review_configs"][0]["allowed_decisions"]
    [evidence] = payload["evidence"]
    assert evidence["tool"] == "schedule_payment"
    assert evidence["invoice"]["invoice_id"] == "INV-1001"
    assert evidence["verdict"] == "match"
    assert payload["requester"] == REQUESTER


async def _db_counts(db_uri: str, thread_id: str) -> tuple[int, int]:
    """(payments for INV-1001, checkpoint rows for the thread) in the test database."""
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute("SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'")
        payments = await cur.fetchone()
        cur = await conn.execute(
            "SELECT count(*) FROM checkpoints WHERE thread_id = %s", (thread_id,)
        )
        checkpoints = await cur.fetchone()
    assert payments is not None and checkpoints is not None
    return payments[0], checkpoints[0]


async def test_run_interrupts_then_approval_pays_once(client: LangGraphClient, db_uri: str) -> None:
    thread_id, interrupt = await _start_until_interrupt(client)
    _assert_payment_request(interrupt["value"])
    assert interrupt["value"]["error"] is None
    assert (await client.threads.get(thread_id))["status"] == "interrupted"
    payments, checkpoints = await _db_counts(db_uri, thread_id)
    assert payments == 0
    assert checkpoints > 0, "the interrupted run was not checkpointed in Postgres"

    resume = {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-1", "role": "approver"}}
    await client.runs.wait(thread_id, GRAPH_ID, command={"resume": {interrupt["id"]: resume}})

    state = await client.threads.get_state(thread_id)
    assert state["next"] == []
    assert state["interrupts"] == []
    values = state["values"]
    assert isinstance(values, dict)
    assert values["status"] == "completed", values
    invoice = values["result"]["invoices"]["INV-1001"]
    assert "payment_scheduled" in invoice["actions"], invoice
    assert (await client.threads.get(thread_id))["status"] == "idle"

    payments, checkpoints_after = await _db_counts(db_uri, thread_id)
    assert payments == 1
    assert checkpoints_after > checkpoints
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute(
            "SELECT payment_id, thread_id, amount::text FROM payments WHERE invoice_id = 'INV-1001'"
        )
        [(payment_id, paid_thread, amount)] = await cur.fetchall()
    assert payment_id == invoice["payment"]["payment_id"]
    assert paid_thread == thread_id
    assert amount == interrupt["value"]["action_requests"][0]["args"]["amount"]


async def test_requester_cannot_approve_own_payment(client: LangGraphClient, db_uri: str) -> None:
    thread_id, interrupt = await _start_until_interrupt(client)
    _assert_payment_request(interrupt["value"])

    own = {"decisions": [{"type": "approve"}], "reviewer": {"id": REQUESTER, "role": "approver"}}
    result = await client.runs.wait(thread_id, GRAPH_ID, command={"resume": own})
    assert isinstance(result, dict)
    assert result.get("__interrupt__"), result

    again = _single_interrupt(await client.threads.get_state(thread_id))
    payload = again["value"]
    assert payload["error"] and REQUESTER in payload["error"], payload["error"]
    assert "cannot" in payload["error"]
    _assert_payment_request(payload)
    assert (await client.threads.get(thread_id))["status"] == "interrupted"

    payments, checkpoints = await _db_counts(db_uri, thread_id)
    assert payments == 0
    assert checkpoints > 0
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM approval_decisions WHERE thread_id = %s", (thread_id,)
        )
        row = await cur.fetchone()
    assert row is not None and row[0] == 0
