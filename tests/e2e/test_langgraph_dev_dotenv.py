"""`make dev` reads the project's `.env`, as `.env.example` says (langgraph.json "env").

Before, nothing loaded it: tokens put there as told were not configured, and the inbox
answered 401 "No tokens are configured on this server".
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.devserver import launch
from tests.databases import database_copy
from tests.langgraph_server import server_env

pytestmark = pytest.mark.e2e

TOKENS = {"dot-1": {"identity": "rev-dot", "role": "reviewer", "tenant": "default"}}


@pytest.fixture
def db(server_uri: str, template_db: str) -> Iterator[str]:
    with database_copy(server_uri, template_db, "payables_dotenv") as uri:
        yield uri


def test_langgraph_dev_reads_the_env_file_beside_it(db: str, tmp_path: Path) -> None:
    serve_dir = tmp_path / "server"
    serve_dir.mkdir()
    (serve_dir / ".env").write_text(f"PAYABLES_AUTH_TOKENS='{json.dumps(TOKENS)}'\n")
    env = server_env(os.environ, db, PAYABLES_DATA_DIR=str(tmp_path / "unused-embedded"))
    env.pop("PAYABLES_AUTH_TOKENS", None)
    env.pop("PAYABLES_AUTH_TOKENS_FILE", None)
    with launch(env, serve_dir, tmp_path / "langgraph-dev.log") as url:
        request = urllib.request.Request(
            f"{url}/inbox/api/me", headers={"Authorization": "Bearer dot-1"}
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=30) as response:
            me = json.loads(response.read())
    assert me["identity"] == "rev-dot", me
