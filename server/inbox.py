"""The reviewer inbox: a web page served by the LangGraph server itself (`http.app`).

The page (``/inbox``) and its script and stylesheet are static files that hold no data, so
they are served to anyone by `StaticInbox`, a middleware that answers before routing and
therefore before the server's authentication. Everything that carries data needs the
reviewer's bearer token: ``/inbox/api/me`` (who the token belongs to) is a custom route
behind the server's `authenticate` handler (``enable_custom_route_auth`` in
`langgraph.json`), and the pending approvals, their evidence and the decisions go through
the standard LangGraph API (threads search, thread state, runs with ``command.resume``),
where the resource rules of `server/auth.py` decide who may see and resume what.

Every response of the page carries a Content-Security-Policy that allows only this origin:
the inbox works without, and cannot load, any external asset.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Path served -> (file in STATIC_DIR, media type).
STATIC_FILES = {
    "/inbox": ("inbox.html", "text/html; charset=utf-8"),
    "/inbox/": ("inbox.html", "text/html; charset=utf-8"),
    "/inbox/app.js": ("inbox.js", "text/javascript; charset=utf-8"),
    "/inbox/app.css": ("inbox.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class StaticInbox:
    """Answers GET/HEAD for the inbox's static files; passes every other request on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Read once: a missing file is a broken install and fails the server's start.
        self.files = {
            path: ((STATIC_DIR / name).read_bytes(), media_type)
            for path, (name, media_type) in STATIC_FILES.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a static file, or hand the request to the app (and its auth)."""
        found = self.files.get(scope["path"]) if scope["type"] == "http" else None
        if found is None or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body, media_type = found
        response = Response(
            body if scope["method"] == "GET" else b"",
            media_type=media_type,
            headers=SECURITY_HEADERS,
        )
        if scope["method"] == "HEAD":
            response.headers["content-length"] = str(len(body))
        await response(scope, receive, send)


async def me(request: Request) -> Response:
    """Who the bearer token belongs to: identity, role and tenant, as `authenticate` said."""
    if "user" not in request.scope:
        # Only when langgraph.json wires no auth: then there is nobody to name.
        return JSONResponse(
            {"detail": "This server has no authentication configured; the inbox needs it."},
            status_code=503,
            headers=SECURITY_HEADERS,
        )
    user = request.user
    fields = user.dict() if callable(getattr(user, "dict", None)) else {}
    return JSONResponse(
        {
            "identity": user.identity,
            "role": fields.get("role"),
            "tenant": fields.get("tenant"),
        },
        headers=SECURITY_HEADERS,
    )


app = Starlette(
    routes=[Route("/inbox/api/me", me, methods=["GET"])],
    middleware=[Middleware(StaticInbox)],
)
