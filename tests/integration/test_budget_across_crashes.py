"""The model-call budget holds when the process is killed inside a step, again and again.

The run's ``usage`` in graph state grows only when a step returns: a worker killed after a
step's model calls (a crash loop, each restart continuing the thread) lost their count, and
every restart spent again. Each call is now counted on the thread as it starts
(`state.costs.start_model_call`), and a call that would pass the budget is not made.

Real processes (`payables` killed by a failpoint) and a real OpenAI-compatible endpoint,
served here over HTTP, that counts the requests it gets and answers each with a reply no
role can use, so each role repairs and retries as it would against a confused model.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.cli import explain, killed, payables, payables_json, scalar

pytestmark = pytest.mark.integration

BUDGET = 4
REQUEST = "What does our policy say about duplicate invoices?"


class UnusableModel(BaseHTTPRequestHandler):
    """Chat completions that parse as a reply but hold nothing a role can use."""

    requests = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with UnusableModel.lock:
            UnusableModel.requests += 1
        body = json.dumps(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": 0,
                "model": "gpt-4o-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "I would rather not say."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def model_url() -> Iterator[str]:
    UnusableModel.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), UnusableModel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_a_step_killed_after_its_calls_again_and_again_spends_the_budget_once(
    cli_env: dict[str, str], db_uri: str, model_url: str
) -> None:
    env = {
        **cli_env,
        "OPENAI_API_KEY": "sk-test-not-a-key",
        "OPENAI_BASE_URL": model_url,
        "PAYABLES_MODEL": "gpt-4o-mini",
        "PAYABLES_MAX_MODEL_CALLS": str(BUDGET),
    }
    thread = "budget-crash-loop"
    killed(env, "after:router", "run", REQUEST, "--user", "clerk-ana", "--thread", thread)
    first = UnusableModel.requests
    assert first >= 2, "the router asked its model and a repair before it was killed"
    for _ in range(4):  # a supervisor restarting the worker, which continues the thread
        killed(env, "after:router", "continue", thread)
    assert UnusableModel.requests == BUDGET  # before: 3 more per restart, 15 by now

    done = payables_json(env, "continue", thread)
    assert done["status"] in ("completed", "escalated"), done
    assert UnusableModel.requests == BUDGET, "no call once the thread's budget is spent"
    started = "SELECT calls FROM model_calls_started WHERE thread_id = %s"
    assert scalar(db_uri, started, thread) > BUDGET  # the refused ones are counted too
    shown = payables(env, "show", thread)
    assert shown.returncode == 0, explain(shown)
    assert "model-call budget exhausted" in json.dumps(payables_json(env, "show", thread))
