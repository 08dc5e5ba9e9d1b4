"""A local LangSmith endpoint that keeps what the real SDK sends, for tracing tests.

The real `langsmith.Client` posts runs here (``GET /info`` answers 404, so the client uses
its defaults): as JSON (a client made with ``auto_batch_tracing=False``) or as multipart
batches (the default background client, the one the LangGraph server traces through).
`captured_runs` merges each run's POST and PATCHes, from either, so a test can walk the tree.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest


class _Capture(BaseHTTPRequestHandler):
    bodies: ClassVar[list[tuple[str, str, bytes, str]]] = []

    def do_GET(self) -> None:
        self.send_response(404)
        self.end_headers()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        content_type = self.headers.get("Content-Type") or ""
        type(self).bodies.append((self.command, self.path, body, content_type))
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
    return "\n".join(body.decode("utf-8", "replace") for _, _, body, _ in _Capture.bodies)


def _multipart_runs(body: bytes, content_type: str) -> list[dict[str, Any]]:
    """Runs in a multipart batch: part ``post.ID`` holds the run, ``post.ID.KEY`` its KEY."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or name.count(".") not in (1, 2):
            continue
        operation, run_id, *key = name.split(".")
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        value = json.loads(payload)
        run = runs.setdefault((operation, run_id), {"id": run_id})
        if key:
            run[key[0]] = value
        elif isinstance(value, dict):
            run.update(value)
    return list(runs.values())


def captured_runs() -> dict[str, dict[str, Any]]:
    """Runs by id, each the merge of its POST and later PATCHes (JSON or multipart bodies)."""
    runs: dict[str, dict[str, Any]] = {}
    for _method, path, body, content_type in _Capture.bodies:
        if content_type.startswith("multipart/"):
            items: list[Any] = _multipart_runs(body, content_type)
        else:
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
