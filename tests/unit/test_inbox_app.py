"""The inbox app on its own: static files for anyone, with a self-only CSP; data needs auth."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from starlette.testclient import TestClient

from runtime.settings import PROJECT_ROOT


def _inbox() -> ModuleType:
    # langgraph.json loads it by path, like this: `server` need not be an importable package.
    path = PROJECT_ROOT / "server" / "inbox.py"
    spec = importlib.util.spec_from_file_location("inbox_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_static_files_are_served_with_self_only_policy() -> None:
    inbox = _inbox()
    client = TestClient(inbox.app)
    for path, name, kind in (
        ("/inbox", "inbox.html", "text/html"),
        ("/inbox/", "inbox.html", "text/html"),
        ("/inbox/app.js", "inbox.js", "text/javascript"),
        ("/inbox/app.css", "inbox.css", "text/css"),
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.content == (Path(inbox.STATIC_DIR) / name).read_bytes()
        assert response.headers["content-type"].startswith(kind)
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy
        assert "http" not in policy  # no other origin is allowed
        head = client.head(path)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(response.content))


def test_everything_else_reaches_the_app() -> None:
    client = TestClient(_inbox().app)
    assert client.post("/inbox").status_code in (404, 405)  # not answered by the static layer
    assert client.get("/inbox/other.js").status_code == 404
    # Without the server's auth middleware there is no user: refused, never anonymous data.
    response = client.get("/inbox/api/me")
    assert response.status_code == 503
    assert "no authentication configured" in response.json()["detail"]


def test_page_references_only_its_own_assets() -> None:
    html = (PROJECT_ROOT / "server" / "static" / "inbox.html").read_text()
    assert 'src="/inbox/app.js"' in html and 'href="/inbox/app.css"' in html
    for name in ("inbox.html", "inbox.js", "inbox.css"):
        text = (PROJECT_ROOT / "server" / "static" / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
