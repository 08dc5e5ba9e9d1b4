"""Start a real `langgraph dev` server for end-to-end tests, and stop all of it afterwards.

The server runs as a child process on a free loopback port, in its own working directory
(``workdir``), with the project's `langgraph.json` paths made absolute.

`langgraph dev` overwrites `DATABASE_URI` with ``:memory:`` inside its process, so the
server is pointed at a test database through `PAYABLES_DATABASE_URI` (see `runtime.settings`).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

# One launcher: the same helpers start the server for `make loadtest`.
from loadtest.devserver import (
    _langgraph_command,
    _ok,
    _stop,
    dev_config,
    free_port,
)

STARTUP_DEADLINE_S = 90.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def server_env(base: Mapping[str, str], db_uri: str, **extra: str) -> dict[str, str]:
    """``base`` pointed at ``db_uri``, with tracing, analytics and version checks off."""
    env = {
        **base,
        "DATABASE_URI": db_uri,
        "PAYABLES_DATABASE_URI": db_uri,
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGGRAPH_NO_VERSION_CHECK": "true",  # else it asks pypi.org for a newer version
        "LANGSMITH_TRACING": "false",
        "LANGCHAIN_TRACING_V2": "false",
        **extra,
    }
    for key in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGGRAPH_API_KEY"):
        env.pop(key, None)
    return env


@contextmanager
def langgraph_dev(env: Mapping[str, str], workdir: Path) -> Iterator[str]:
    """Run `langgraph dev` with ``env`` in ``workdir`` on a free loopback port; yield its URL.

    The server's output goes to ``workdir/langgraph-dev.log``; a start-up failure fails
    the test with its tail.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve_dir = workdir / "server"
    serve_dir.mkdir(parents=True)
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
        str(dev_config(serve_dir)),
    ]
    log_path = workdir / "langgraph-dev.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=serve_dir,
            env=dict(env),
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
