"""Start `langgraph dev` for the project on a free loopback port and stop it cleanly.

The server runs in a scratch directory with a copy of `langgraph.json` whose paths are made
absolute: `langgraph dev` keeps its thread and run index in `./.langgraph_api/`, and a
developer's own `langgraph dev` in the checkout reads and rewrites that folder. It is
pointed at Postgres through `PAYABLES_DATABASE_URI` (`langgraph dev` overwrites
`DATABASE_URI` with ``:memory:`` inside its process). Nothing is ever contacted beyond
loopback: no version check, no analytics, no tracing.
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
from typing import Any

from runtime.settings import PROJECT_ROOT
from runtime.tracing import TRACING_ENABLED_BY

STARTUP_DEADLINE_S = 90.0
SHUTDOWN_GRACE_S = 15.0
_LOCAL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
    **{name: "false" for name in TRACING_ENABLED_BY},
}


class DevServerError(RuntimeError):
    """`langgraph dev` did not start, or left processes behind."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _absolute(spec: str) -> str:
    """``./file.py:attr`` from `langgraph.json` as an absolute path into the project."""
    path, _, attr = spec.rpartition(":")
    return f"{(PROJECT_ROOT / path).resolve()}:{attr}"


def dev_config(workdir: Path) -> Path:
    """The project's `langgraph.json` with every path absolute, written to ``workdir``."""
    config: dict[str, Any] = json.loads((PROJECT_ROOT / "langgraph.json").read_text())
    config["graphs"] = {name: _absolute(spec) for name, spec in config["graphs"].items()}
    config["dependencies"] = [str((PROJECT_ROOT / dep).resolve()) for dep in config["dependencies"]]
    for key in ("checkpointer", "auth"):
        if key in config:
            config[key]["path"] = _absolute(config[key]["path"])
    if "app" in config.get("http", {}):
        config["http"]["app"] = _absolute(config["http"]["app"])
    # `env` stays relative: the server reads ``workdir``'s .env, never the developer's.
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
        if int(fields[2]) == pgid and fields[0] != "Z":
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
    try:
        os.killpg(pgid, signal.SIGKILL)  # grandchildren outlive the leader in the same group
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while (left := _group_alive(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if left:
        raise DevServerError(f"langgraph dev left processes behind: {left}")


def _langgraph_command() -> list[str]:
    script = Path(sys.executable).with_name("langgraph")
    return [str(script)] if script.exists() else [sys.executable, "-m", "langgraph_cli"]


API_KEY_VARIABLES = ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGGRAPH_API_KEY")
"""Taken out of the server's environment: nothing it runs may reach a hosted service."""


@contextmanager
def dev_server(database_uri: str, env: Mapping[str, str], workdir: Path) -> Iterator[str]:
    """Run `langgraph dev` against ``database_uri`` with ``env``; yield its base URL.

    The log is written to ``workdir/langgraph-dev.log``; its tail is in every error.
    """
    child_env = {**env, **OFFLINE_ENV, "PAYABLES_DATABASE_URI": database_uri}
    for key in API_KEY_VARIABLES:
        child_env.pop(key, None)
    workdir.mkdir(parents=True, exist_ok=True)
    with launch(child_env, workdir, workdir / "langgraph-dev.log") as url:
        yield url


@contextmanager
def launch(env: Mapping[str, str], serve_dir: Path, log_path: Path) -> Iterator[str]:
    """Run `langgraph dev` with exactly ``env`` in ``serve_dir`` on a free loopback port.

    Yields the base URL once ``/ok`` answers; output goes to ``log_path``. Raises
    `DevServerError` with the log's tail when the server exits, loses its port or does not
    answer within `STARTUP_DEADLINE_S`. Stops the whole process group afterwards.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        *_langgraph_command(),
        "dev",
        *("--host", "127.0.0.1", "--port", str(port)),
        "--no-browser",
        "--no-reload",
        *("--config", str(dev_config(serve_dir))),
    ]
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
            # langgraph dev silently moves to another port when ours is taken; then
            # whatever answers on ours is not this server.
            if "already in use" in output():
                raise DevServerError(
                    f"port {port} was taken before langgraph dev bound it:\n{output()}"
                )
            if _ok(url):
                break
            if proc.poll() is not None:
                raise DevServerError(f"langgraph dev exited with {proc.returncode}:\n{output()}")
            if time.monotonic() > deadline:
                raise DevServerError(
                    f"langgraph dev did not answer {url}/ok within {STARTUP_DEADLINE_S:.0f}s:"
                    f"\n{output()}"
                )
            time.sleep(0.25)
        yield url
    finally:
        _stop(proc)
