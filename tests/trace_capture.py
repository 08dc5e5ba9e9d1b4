"""A local LangSmith endpoint that keeps what the real SDK sends, for tracing tests.

The real `langsmith.Client` posts runs here (``GET /info`` answers 404 so it uses the plain
run endpoints); `CapturedRuns` merges each run's POST and PATCHes so a test can walk the tree.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest


class _Capture(BaseHTTPRequestHandler):
    bodies: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_GET(self) -> None:
        self.send_response(404)
        self.end_headers()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        type(self).bodies.append((self.command, self.path, body))
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_PATCH(self) -> None:
        self.do_POST()

    def log_message(self, format: str, *args: Any) -> None:
        return


def captured_text() -> str:
    """Everything the SDK sent, as one string (for searching it)."""
    return "\n".join(body.decode("utf-8", "replace") for _, _, body in _Capture.bodies)


def captured_runs() -> dict[str, dict[str, Any]]:
    """Runs by id, each the merge of its POST and later PATCHes (JSON bodies only)."""
    runs: dict[str, dict[str, Any]] = {}
    for _method, path, body in _Capture.bodies:
        try:
            value = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        items = value if isinstance(value, list) else [value]
        if isinstance(value, dict) and ("post" in value or "patch" in value):
            items = [*value.get("post", []), *value.get("patch", [])]
        for item in items:
            if not isinstance(item, dict):
                continue
            run_id = str(item.get("id") or path.rstrip("/").rsplit("/", 1)[-1])
            merged = runs.setdefault(run_id, {})
            for key, val in item.items():
                if val is not None:
                    merged[key] = val
    return runs


@pytest.fixture
def trace_endpoint() -> Iterator[str]:
    """The URL of a fresh capture endpoint on a free loopback port."""
    _Capture.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
