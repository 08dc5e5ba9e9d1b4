"""Start a real `langgraph dev` server for end-to-end tests, and stop all of it afterwards.

The server runs as a child process on a free loopback port, in its own working directory
(``workdir``), with the project's `langgraph.json` paths made absolute.

`langgraph dev` overwrites `DATABASE_URI` with ``:memory:`` inside its process, so the
server is pointed at a test database through `PAYABLES_DATABASE_URI` (see `runtime.settings`).
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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from runtime.settings import PROJECT_ROOT

STARTUP_DEADLINE_S = 90.0
SHUTDOWN_GRACE_S = 15.0
# No proxy, ever: the server is on loopback and nothing else may be contacted.
LOCAL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port() -> int:
    """A TCP port nothing listens on right now (the server may still lose a race for it)."""
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


def dev_config(workdir: Path) -> Path:
    """The project's `langgraph.json` with its paths made absolute, written to ``workdir``.

    The server runs in ``workdir``, not the project root: `langgraph dev` keeps its thread
    and run index in `./.langgraph_api/` (no setting moves it; `disable_persistence` is
    dropped by the CLI's config validation), and a developer's own `langgraph dev` in the
    checkout reads and rewrites that folder.
    """
    config = json.loads((PROJECT_ROOT / "langgraph.json").read_text())
    config["graphs"] = {name: _absolute(spec) for name, spec in config["graphs"].items()}
    config["checkpointer"]["path"] = _absolute(config["checkpointer"]["path"])
    if "auth" in config:
        config["auth"]["path"] = _absolute(config["auth"]["path"])
    if "http" in config and "app" in config["http"]:
        config["http"]["app"] = _absolute(config["http"]["app"])
    config["dependencies"] = [str((PROJECT_ROOT / dep).resolve()) for dep in config["dependencies"]]
    path = workdir / "langgraph.json"
    path.write_text(json.dumps(config, indent=2))
    return path


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


def _ok(url: str) -> bool:
    try:
        with LOCAL_OPENER.open(f"{url}/ok", timeout=2) as response:
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
