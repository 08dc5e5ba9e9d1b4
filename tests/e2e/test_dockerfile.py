"""`langgraph dockerfile` turns the repo's `langgraph.json` into a deployable Dockerfile.

There is no Docker engine here to build the image; the test checks what the image would
run: the graph, the Postgres checkpointer, the auth handler and the inbox app, each at a
path that exists in the repository (the Dockerfile copies the repo to ``/deps/<folder>``). The
CLI runs without network (a private network namespace when available, else a dead proxy),
so generating the Dockerfile provably pulls and asks nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime.settings import PROJECT_ROOT

pytestmark = pytest.mark.e2e

# langgraph names the folder in the image after the repository's own folder.
IMAGE_ROOT = f"/deps/{PROJECT_ROOT.name}"
_ENV_LINE = re.compile(r"^ENV (\w+)='(.*)'$", re.MULTILINE)


def _offline(command: list[str]) -> tuple[list[str], dict[str, str]]:
    """``command`` with no way out: no network namespace, or every proxy pointing nowhere."""
    env = {
        **os.environ,
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGGRAPH_NO_VERSION_CHECK": "true",
        # Port 9 (discard) on loopback: anything that tries the network fails at once.
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "ALL_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    unshare = shutil.which("unshare")
    if unshare is not None and os.geteuid() == 0:
        return [unshare, "--net", *command], env
    return command, env


def _generate(out: Path) -> str:
    script = Path(sys.executable).with_name("langgraph")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "langgraph_cli"]
    command, env = _offline(
        [*cli, "dockerfile", "--config", str(PROJECT_ROOT / "langgraph.json"), str(out)]
    )
    done = subprocess.run(
        command, cwd=out.parent, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"langgraph dockerfile failed:\n{done.stdout}\n{done.stderr}"
    assert out.is_file(), done.stdout
    return out.read_text()


def _repo_file(spec: str) -> Path:
    """``/deps/<folder>/x/y.py:attr`` -> the repository file the image will hold there."""
    path = spec.rpartition(":")[0]
    assert path.startswith(f"{IMAGE_ROOT}/"), spec
    return PROJECT_ROOT / path.removeprefix(f"{IMAGE_ROOT}/")


def test_dockerfile_serves_graph_checkpointer_auth_and_inbox(tmp_path: Path) -> None:
    before = {p.name for p in PROJECT_ROOT.iterdir()}
    dockerfile = _generate(tmp_path / "Dockerfile")
    assert {p.name for p in PROJECT_ROOT.iterdir()} == before, "it wrote into the checkout"

    config = json.loads((PROJECT_ROOT / "langgraph.json").read_text())
    assert dockerfile.startswith(f"FROM langchain/langgraph-api:{config['python_version']}")
    assert f"ADD . {IMAGE_ROOT}" in dockerfile
    env: dict[str, Any] = {name: json.loads(value) for name, value in _ENV_LINE.findall(dockerfile)}

    assert env["LANGSERVE_GRAPHS"] == {"payables": f"{IMAGE_ROOT}/graphs/payables.py:served_graph"}
    assert env["LANGGRAPH_CHECKPOINTER"]["path"] == (
        f"{IMAGE_ROOT}/state/checkpointer.py:checkpointer"
    )
    assert env["LANGGRAPH_AUTH"]["path"] == f"{IMAGE_ROOT}/server/auth.py:auth"
    assert env["LANGGRAPH_HTTP"] == {
        "app": f"{IMAGE_ROOT}/server/inbox.py:app",
        "enable_custom_route_auth": True,
    }
    specs = [
        *env["LANGSERVE_GRAPHS"].values(),
        env["LANGGRAPH_CHECKPOINTER"]["path"],
        env["LANGGRAPH_AUTH"]["path"],
        env["LANGGRAPH_HTTP"]["app"],
    ]
    for spec in specs:
        assert _repo_file(spec).is_file(), f"{spec} names a file the repo does not have"
    for static in ("inbox.html", "inbox.js", "inbox.css"):
        assert (PROJECT_ROOT / "server" / "static" / static).is_file()
