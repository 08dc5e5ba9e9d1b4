"""The reviewer inbox: a web page served by the LangGraph server itself (`http.app`).

The page (``/inbox``) and its script and stylesheet are static files that hold no data, so
they are served to anyone by `StaticInbox`, a middleware that answers before routing and
therefore before the server's authentication. Everything that carries data needs the
reviewer's bearer token: ``/inbox/api/me`` (who the token belongs to) is a custom route
behind the server's `authenticate` handler (``enable_custom_route_auth`` in
`langgraph.json`), and so is ``/inbox/api/pending``: the threads whose approval waits, as
the agent's run index says, among those the token may see. The server's own thread status
is no guide: a thread answered by `payables resume` stays ``interrupted`` there (its card
could only be refused), and one whose second, refused request failed shows ``error`` while
its approval still waits. Their evidence and the decisions go through the standard
LangGraph API (thread state, runs with ``command.resume``), where the resource rules of
`server/auth.py` decide again who may see and resume what.

Every response of the page carries a Content-Security-Policy that allows only this origin:
the inbox works without, and cannot load, any external asset.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from server.auth import Role

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
    who = _who(request)
    if who is None:  # only when langgraph.json wires no auth: then there is nobody to name
        return JSONResponse(_NO_AUTH, status_code=503, headers=SECURITY_HEADERS)
    identity, role, tenant = who
    return JSONResponse(
        {"identity": identity, "role": role, "tenant": tenant}, headers=SECURITY_HEADERS
    )


def _who(request: Request) -> tuple[str, str | None, str | None] | None:
    """The caller's identity, role and tenant, as `authenticate` said (None: no auth)."""
    if "user" not in request.scope:
        return None
    user = request.user
    fields = user.dict() if callable(getattr(user, "dict", None)) else {}
    return user.identity, fields.get("role"), fields.get("tenant")


_NO_AUTH = {"detail": "This server has no authentication configured; the inbox needs it."}


async def pending(request: Request) -> Response:
    """The threads awaiting an approval that the token may see, oldest request first.

    Seen as `server.auth.visible_threads` scopes the server's threads (a clerk their own
    requests, a reviewer or controller their tenant's, an admin every tenant's), applied to
    the run index, whose requester is the thread's owner.
    """
    who = _who(request)
    if who is None:
        return JSONResponse(_NO_AUTH, status_code=503, headers=SECURITY_HEADERS)
    # Imported on first use: the agent's settings, database and auth rules.
    from server.auth import Identity, visible_threads
    from state.db import default_database

    identity, role, tenant = who
    scope = visible_threads(Identity(identity, cast("Role", role), str(tenant))) or {}
    async with default_database().connection() as conn:
        cur = await conn.execute(
            "SELECT thread_id FROM runs WHERE status = 'interrupted'"
            " AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)"
            " AND (%(owner)s::text IS NULL OR requester = %(owner)s)"
            " ORDER BY created_at, thread_id",
            {"tenant": scope.get("tenant"), "owner": scope.get("owner")},
        )
        threads = [row["thread_id"] for row in await cur.fetchall()]
    return JSONResponse({"threads": threads}, headers=SECURITY_HEADERS)


app = Starlette(
    routes=[
        Route("/inbox/api/me", me, methods=["GET"]),
        Route("/inbox/api/pending", pending, methods=["GET"]),
    ],
    middleware=[Middleware(StaticInbox)],
)
