"""Bearer-token authentication and per-role resource rules for the LangGraph server.

`langgraph.json` names ``auth`` here. Every request needs ``Authorization: Bearer <token>``;
the token is checked against, in this order:

- ``PAYABLES_AUTH_TOKENS``: a JSON object ``{"<token>": {"identity": "ctl-1", "role":
  "controller", "tenant": "default"}}`` (development), or ``PAYABLES_AUTH_TOKENS_FILE``, the
  path of a file holding such an object (re-read on every request: edit it to rotate);
- ``PAYABLES_JWT_SECRET`` (HS256) with ``PAYABLES_JWT_ISSUER`` and ``PAYABLES_JWT_AUDIENCE``
  (deployment): claims ``sub`` (identity), ``role``, ``tenant``, ``exp`` are all required.

With neither configured every request gets 401 saying how to configure tokens (fail closed).

Roles: ``clerk`` creates threads and runs on its own threads; ``reviewer`` and
``controller`` read the threads of their tenant and may only resume an approval interrupt
(a controller's signature is the one dual control needs), sending the resume answer and no
run option that changes what runs or from where (`resume_extras`); ``admin`` (operators)
may do everything except resume an approval on a thread they started. Only admins write a
thread's state directly; everyone else changes it through runs. A missing or bad token is
401, a forbidden action 403 (raised before anything is written); a thread another clerk or
tenant owns is filtered out and answers 404, as LangGraph does for invisible resources.

Resume checks read the agent's own tables (the run index and the audit chain) because
thread metadata cannot say who may decide: the requester never decides, and above the
dual-control threshold the last missing signature must be a controller's.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import jwt
import psycopg
from langgraph_sdk import Auth
from psycopg.rows import dict_row

from guards.input_checks import unstorable_reason
from state.answer_claims import AnswerClaim, claim_answer
from state.approvals import ANSWERED_BY, ANSWERS_REQUEST
from state.audit import latest_approval_request, record_refused_answer

ROLES = ("clerk", "reviewer", "controller", "admin")
Role = Literal["clerk", "reviewer", "controller", "admin"]
# The approval node's reviewer roles (state/approvals.py): a token's role as recorded in the
# audit. An admin operates the service; the controller signature dual control needs is not
# theirs to give.
APPROVAL_ROLES: dict[str, str] = {
    "reviewer": "approver",
    "controller": "controller",
    "admin": "approver",
}
CONFIGURE_HINT = (
    "Set PAYABLES_AUTH_TOKENS (JSON object token -> {identity, role, tenant}) or "
    "PAYABLES_AUTH_TOKENS_FILE for development, or PAYABLES_JWT_SECRET, PAYABLES_JWT_ISSUER "
    "and PAYABLES_JWT_AUDIENCE (HS256) for deployment."
)

auth = Auth()
# Not __name__: the server loads this file as "dynamic_module_<hash>", a name outside this
# project's loggers, so its records would escape the masking `runtime.logs` applies.
log = logging.getLogger("server.auth")
# Thread metadata that decides who sees a thread (`visible_threads`).
OWNERSHIP_KEYS = frozenset({"owner", "tenant"})


@dataclass(frozen=True)
class Identity:
    """Who a verified token says the caller is."""

    identity: str
    role: Role
    tenant: str

    def user(self) -> dict[str, Any]:
        """The server's user object: `MinimalUserDict` plus ``role`` and ``tenant``."""
        return {
            "identity": self.identity,
            "display_name": self.identity,
            "is_authenticated": True,
            "permissions": [self.role],
            "role": self.role,
            "tenant": self.tenant,
        }


class AuthConfigError(ValueError):
    """The token configuration itself is unusable (an operator's mistake, not the caller's)."""


def _unauthorized(detail: str) -> Auth.exceptions.HTTPException:
    return Auth.exceptions.HTTPException(
        status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


def _forbidden(detail: str) -> Auth.exceptions.HTTPException:
    return Auth.exceptions.HTTPException(status_code=403, detail=detail)


def _identity_from(fields: Mapping[str, Any], where: str) -> Identity:
    identity, role, tenant = fields.get("identity"), fields.get("role"), fields.get("tenant")
    if not isinstance(identity, str) or not identity.strip() or not identity.isprintable():
        raise AuthConfigError(f"{where}: identity must be a non-empty printable string")
    if role not in ROLES:
        raise AuthConfigError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
    if not isinstance(tenant, str) or not tenant.strip():
        raise AuthConfigError(f"{where}: tenant must be a non-empty string")
    return Identity(identity=identity, role=cast(Role, role), tenant=tenant)


def token_table(environ: Mapping[str, str] | None = None) -> dict[str, Identity] | None:
    """The development token table, or None when none is configured.

    Raises `AuthConfigError` when the table is configured but unusable.
    """
    env = os.environ if environ is None else environ
    raw = env.get("PAYABLES_AUTH_TOKENS", "").strip()
    source = "PAYABLES_AUTH_TOKENS"
    path = env.get("PAYABLES_AUTH_TOKENS_FILE", "").strip()
    if raw and path:
        # Otherwise the file would be ignored, and rotating tokens by editing it would not.
        raise AuthConfigError(
            "PAYABLES_AUTH_TOKENS and PAYABLES_AUTH_TOKENS_FILE are both set; set one of them"
        )
    if path:
        source = f"PAYABLES_AUTH_TOKENS_FILE {path}"
        try:
            raw = Path(path).read_text()
        except OSError as exc:
            raise AuthConfigError(f"{source} cannot be read: {exc}") from exc
    if not raw:
        return None
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AuthConfigError(f"{source} is not JSON: {exc}") from exc
    if not isinstance(table, dict):
        raise AuthConfigError(f"{source} must be a JSON object token -> {{identity, role, tenant}}")
    parsed: dict[str, Identity] = {}
    for index, (token, fields) in enumerate(table.items(), start=1):
        if not isinstance(fields, dict):
            raise AuthConfigError(f"{source} entry {index}: must be an object")
        parsed[token] = _identity_from(fields, f"{source} entry {index}")
    return parsed


@dataclass(frozen=True)
class JwtSettings:
    """HS256 verification settings."""

    secret: str
    issuer: str
    audience: str


def jwt_settings(environ: Mapping[str, str] | None = None) -> JwtSettings | None:
    """JWT settings, or None when no secret is set; `AuthConfigError` if half configured."""
    env = os.environ if environ is None else environ
    secret = env.get("PAYABLES_JWT_SECRET", "")
    if not secret:
        return None
    issuer, audience = env.get("PAYABLES_JWT_ISSUER", ""), env.get("PAYABLES_JWT_AUDIENCE", "")
    if not issuer or not audience:
        raise AuthConfigError(
            "PAYABLES_JWT_SECRET is set but PAYABLES_JWT_ISSUER and PAYABLES_JWT_AUDIENCE must "
            "be set too (tokens are checked against both)."
        )
    return JwtSettings(secret=secret, issuer=issuer, audience=audience)


def _known_token(table: Mapping[str, Identity], token: str) -> Identity | None:
    """``table[token]``, compared in constant time, token by token."""
    presented = token.encode()
    found = None
    for candidate, identity in table.items():
        if hmac.compare_digest(candidate.encode(), presented):
            found = identity
    return found


def verify_token(token: str, environ: Mapping[str, str] | None = None) -> Identity:
    """The identity ``token`` proves; `Auth.exceptions.HTTPException` 401 if it proves none."""
    try:
        table = token_table(environ)
        settings = jwt_settings(environ)
    except AuthConfigError as exc:
        # The operator's mistake, told to the operator: the caller is not yet known, and
        # file paths and parse errors are none of an anonymous caller's business.
        log.error("Server token configuration is unusable, every request gets 401: %s", exc)
        raise _unauthorized(
            "Server token configuration is unusable, so no token is accepted; the server's "
            "log says why."
        ) from exc
    if table is None and settings is None:
        raise _unauthorized(
            f"No tokens are configured on this server, so none is valid. {CONFIGURE_HINT}"
        )
    if table is not None and (known := _known_token(table, token)) is not None:
        return known
    if settings is not None:
        try:
            claims = jwt.decode(
                token,
                settings.secret,
                algorithms=["HS256"],
                issuer=settings.issuer,
                audience=settings.audience,
                options={"require": ["sub", "exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"Invalid token: {exc}.") from exc
        try:
            return _identity_from(
                {
                    "identity": claims.get("sub"),
                    "role": claims.get("role"),
                    "tenant": claims.get("tenant"),
                },
                "token claims",
            )
        except AuthConfigError as exc:
            raise _unauthorized(f"Invalid token: {exc}.") from exc
    raise _unauthorized("Invalid token: not a known token.")


@auth.authenticate
async def authenticate(authorization: str | None) -> Auth.types.MinimalUserDict:
    """Verify the bearer token; the user object carries identity, role and tenant."""
    if not authorization:
        raise _unauthorized("Missing Authorization header; send 'Authorization: Bearer <token>'.")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Authorization must be 'Bearer <token>'.")
    return cast(Auth.types.MinimalUserDict, verify_token(token.strip()).user())


def caller(ctx: Auth.types.AuthContext) -> Identity:
    """The verified identity of the request's user (set by `authenticate`)."""
    user = ctx.user
    role = user["role"] if "role" in user else None
    tenant = user["tenant"] if "tenant" in user else None
    try:
        return _identity_from({"identity": user.identity, "role": role, "tenant": tenant}, "user")
    except AuthConfigError as exc:
        raise _forbidden(f"Unrecognised user: {exc}") from exc


def visible_threads(who: Identity) -> Auth.types.FilterType | None:
    """The metadata filter for the threads ``who`` may see (None: all)."""
    if who.role == "admin":
        return None
    if who.role == "clerk":
        # Identities are unique within a tenant only: a namesake elsewhere is someone else.
        return {"owner": who.identity, "tenant": who.tenant}
    return {"tenant": who.tenant}


@auth.on
async def deny_unlisted(ctx: Auth.types.AuthContext, value: Any) -> None:
    """Anything without its own rule below (crons, store, assistant writes) is for admins."""
    if caller(ctx).role != "admin":
        raise _forbidden(f"{ctx.resource}.{ctx.action} is for admins only.")


@auth.on.assistants.create
async def create_assistant(ctx: Auth.types.AuthContext, value: Any) -> None:
    """Admins configure assistants, but not with approval policy settings (see create_run)."""
    _assistant_without_policy(ctx, value)


@auth.on.assistants.update
async def update_assistant(ctx: Auth.types.AuthContext, value: Any) -> None:
    """As `create_assistant`."""
    _assistant_without_policy(ctx, value)


def _assistant_without_policy(ctx: Auth.types.AuthContext, value: Any) -> None:
    # A run on an assistant gets the assistant's context as its settings: one carrying a
    # threshold would set it for every run on it, whoever starts or resumes them.
    if caller(ctx).role != "admin":
        raise _forbidden(f"{ctx.resource}.{ctx.action} is for admins only.")
    if policy := policy_settings(run_settings(value if isinstance(value, Mapping) else {})):
        raise _policy_refused(policy, "not an assistant's; create it without them.")


@auth.on.assistants.read
async def read_assistants(ctx: Auth.types.AuthContext, value: Any) -> None:
    """Every authenticated user may see the graphs."""
    caller(ctx)


@auth.on.assistants.search
async def search_assistants(ctx: Auth.types.AuthContext, value: Any) -> None:
    """Every authenticated user may list the graphs."""
    caller(ctx)


@auth.on.threads.create
async def create_thread(
    ctx: Auth.types.AuthContext, value: Auth.types.ThreadsCreate
) -> Auth.types.FilterType | None:
    """Clerks (and admins) start threads; the thread records its owner and tenant."""
    who = caller(ctx)
    if who.role not in ("clerk", "admin"):
        raise _forbidden(f"A {who.role} cannot start threads; a clerk starts them.")
    thread_id = value.get("thread_id")
    if thread_id is not None and who.role != "admin":
        await check_thread_id_free(who, str(thread_id))
    metadata = value.setdefault("metadata", {})
    metadata["owner"] = who.identity
    metadata["tenant"] = who.tenant
    # A create naming an existing thread (if_exists="do_nothing") returns that thread: the
    # filter keeps one the caller may not read out of reach, as `read_thread` does.
    return visible_threads(who)


@auth.on.threads.read
async def read_thread(
    ctx: Auth.types.AuthContext, value: Auth.types.ThreadsRead
) -> Auth.types.FilterType | None:
    """Clerks see their own threads; reviewers and controllers those of their tenant."""
    return visible_threads(caller(ctx))


@auth.on.threads.search
async def search_threads(
    ctx: Auth.types.AuthContext, value: Auth.types.ThreadsSearch
) -> Auth.types.FilterType | None:
    """As `read_thread`."""
    return visible_threads(caller(ctx))


@auth.on.threads.update
async def update_thread(
    ctx: Auth.types.AuthContext, value: Auth.types.ThreadsUpdate
) -> Auth.types.FilterType | None:
    """Only the owning clerk (or an admin) changes a thread's metadata or cancels its runs.

    Writing a thread's state (``POST /threads/{id}/state``, the event without ``metadata``
    or ``action``) is for admins only: it is a run input that skips `create_run`'s checks
    (a clerk could write ``user`` and be recorded as someone else, then approve the request
    with a reviewer token of their own), and state edits bypass approvals.
    """
    who = caller(ctx)
    if who.role not in ("clerk", "admin"):
        raise _forbidden(f"A {who.role} cannot change threads; resume the approval instead.")
    if who.role != "admin" and "metadata" not in value and "action" not in value:
        raise _forbidden(
            "Thread state is written by runs, not directly: start a run with input "
            '{"request": ..., "user": <your identity>} instead.'
        )
    claimed = OWNERSHIP_KEYS & set(value.get("metadata") or {})
    if claimed and who.role != "admin":
        raise _forbidden(f"Thread {', '.join(sorted(claimed))} is set by the server, not changed.")
    return visible_threads(who)


@auth.on.threads.delete
async def delete_thread(
    ctx: Auth.types.AuthContext, value: Auth.types.ThreadsDelete
) -> Auth.types.FilterType | None:
    """Only admins delete threads (the audit trail points at them)."""
    who = caller(ctx)
    if who.role != "admin":
        raise _forbidden("Only an admin deletes threads.")
    return None


def _resume_value(command: Any) -> bool:
    """Whether ``command`` is a pure resume (no goto, no state update)."""
    if not isinstance(command, Mapping) or "resume" not in command:
        return False
    return all(command.get(key) in (None, [], {}) for key in command if key != "resume")


# What the server itself puts in a run's ``config.configurable`` before `create_run` sees it
# (langgraph_api's `create_valid_run`, 0.16.x): the verified user, request and timing ids,
# and trace propagation. Everything else there came from the request.
SERVER_CONFIGURABLE_KEYS = frozenset(
    {
        "langgraph_auth_user",
        "langgraph_auth_user_id",
        "langgraph_auth_permissions",
        "langgraph_request_id",
        "__request_start_time_ms__",
        "__after_seconds__",  # `after_seconds` is checked on its own
        "__otel_traceparent__",
        "__otel_tracestate__",
        "__dd_trace_headers__",
    }
)
# Request fields a reviewer's resume may not send, as (where the server puts them, the
# field there, the values a plain `runs.create/wait/stream(thread, assistant,
# command={"resume": ...})` or the inbox leaves there, the field's name in the request).
# Any other value changes what runs, from where or when, or what else happens on the thread.
RESUME_DEFAULTS: tuple[tuple[str, str, tuple[Any, ...], str], ...] = (
    ("kwargs", "interrupt_before", (None, []), "interrupt_before"),
    ("kwargs", "interrupt_after", (None, []), "interrupt_after"),
    ("kwargs", "webhook", (None, ""), "webhook"),
    ("kwargs", "feedback_keys", (None, []), "feedback_keys"),
    ("kwargs", "temporary", (False,), "on_completion"),
    ("kwargs", "checkpoint_during", (True, None), "checkpoint_during"),
    ("kwargs", "durability", ("async", None), "durability"),
    ("value", "if_not_exists", ("reject", None), "if_not_exists"),
    ("value", "after_seconds", (0, None), "after_seconds"),
    ("value", "metadata", ({}, None), "metadata"),
)
# `multitask_strategy`: the server's default for these endpoints is "enqueue" (the resume
# waits its turn); "reject" refuses instead. "interrupt" and "rollback" cancel other runs.
RESUME_MULTITASK = frozenset({"enqueue", "reject"})
# Where a checkpoint selection lands in ``config.configurable``.
CHECKPOINT_KEYS = {
    "checkpoint_id": "checkpoint_id",
    "checkpoint_ns": "checkpoint",
    "checkpoint_map": "checkpoint",
    "thread_id": "checkpoint",
    "__langsmith_project__": "langsmith_tracer",
    "__langsmith_example_id__": "langsmith_tracer",
}


def resume_extras(value: Mapping[str, Any]) -> list[str]:
    """The request fields beyond the resume answer in a `create_run` ``value`` (sorted).

    A reviewer's resume answers the approval waiting on the thread's latest checkpoint, and
    does nothing else. Allowed besides ``command.resume``: how the caller watches the run
    (``stream_mode``, ``stream_subgraphs``, ``stream_resumable``: they change nothing that
    runs) and HTTP headers the server copies into the run's configuration (its
    ``configurable_headers``; named with dashes, and the agent reads none of them).
    Refused: a checkpoint to start from (a fork), breakpoints, ``config`` or ``context``
    of any kind (tags, recursion limit, configurable keys, model or run settings), a webhook,
    a delay, run metadata, another thread's creation, a multitask strategy that cancels
    other runs, and a durability other than the default.
    """
    kwargs: Mapping[str, Any] = value.get("kwargs") or {}
    found: set[str] = set()
    for where, key, defaults, name in RESUME_DEFAULTS:
        source = kwargs if where == "kwargs" else value
        if key in source and not any(source[key] == default for default in defaults):
            found.add(name)
    if value.get("multitask_strategy", "enqueue") not in RESUME_MULTITASK:
        found.add("multitask_strategy")
    config = kwargs.get("config") or {}
    found |= {f"config.{key}" for key in config if key != "configurable"}
    configurable: Mapping[str, Any] = config.get("configurable") or {}
    context = kwargs.get("context") or {}
    if context:
        # The server mirrors the caller's `context` into `configurable`, or copies the
        # caller's `configurable` into `context`: either way it is the caller's.
        where = "context" if configurable.get("__context_provided__") else "config.configurable"
        found |= {f"{where}.{key}" for key in context}
    else:
        for key in configurable:
            if key in SERVER_CONFIGURABLE_KEYS or "-" in str(key):
                continue
            found.add(CHECKPOINT_KEYS.get(str(key), f"config.configurable.{key}"))
    return sorted(found)


def run_settings(kwargs: Mapping[str, Any]) -> set[str]:
    """The agent settings (`runtime.context.Context` fields) a run request tries to set.

    The server passes ``context`` (or, without it, ``config.configurable``) to the graph as
    its `Context`: tenant, approval and dual-control thresholds, budgets. Those are the
    operator's, not the caller's.
    """
    from runtime.context import Context  # the agent's settings, imported on first use

    names = {f.name for f in dataclasses.fields(Context)}
    context = kwargs.get("context") or {}
    configurable = (kwargs.get("config") or {}).get("configurable") or {}
    found: set[str] = set()
    for source in (context, configurable):
        if isinstance(source, Mapping):
            found |= names & {str(key) for key in source}
    return found


def policy_settings(settings: set[str]) -> set[str]:
    """The approval policy settings among ``settings`` (`runtime.context.POLICY_FIELDS`)."""
    from runtime.context import POLICY_FIELDS  # as in `run_settings`

    return settings & set(POLICY_FIELDS)


def _policy_refused(policy: set[str], why: str) -> Auth.exceptions.HTTPException:
    """The 403 for approval policy settings sent with a request: they are the operator's."""
    return _forbidden(
        f"Approval policy settings ({', '.join(sorted(policy))}) are the operator's "
        f"(PAYABLES_* environment), {why}"
    )


@auth.on.threads.create_run
async def create_run(
    ctx: Auth.types.AuthContext, value: Auth.types.RunsCreate
) -> Auth.types.FilterType | None:
    """Clerks run requests on their own threads; reviewers only answer approvals."""
    who = caller(ctx)
    kwargs: dict[str, Any] = value.get("kwargs") or {}
    command = kwargs.get("command")
    thread_id = value.get("thread_id")
    if command is not None and who.role in ("reviewer", "controller"):
        if extras := resume_extras(value):
            raise _forbidden(
                f"A {who.role}'s resume cannot send {', '.join(extras)}: a {who.role} may only "
                "send the resume answer (command.resume) to the approval waiting on the "
                "thread's latest checkpoint. Send the run without it."
            )
    settings = run_settings(kwargs)
    if who.role == "admin" and (policy := policy_settings(settings)):
        raise _policy_refused(
            policy,
            "for every run, an admin's too: who must approve a payment is not set per "
            "request. Send the run without them.",
        )
    if who.role != "admin" and settings:
        raise _forbidden(
            f"Run settings ({', '.join(sorted(settings))}) are set by the operator "
            "(PAYABLES_* environment), not per request; send the run without them."
        )
    if command is not None:
        if who.role == "clerk":
            raise _forbidden("A clerk cannot resume or steer a run; a reviewer answers approvals.")
        if (
            isinstance(command, Mapping)
            and command.get("resume") is None
            and _resume_value({**command, "resume": True})
        ):
            raise Auth.exceptions.HTTPException(
                status_code=422,
                detail=(
                    "command.resume is missing: send the answer, such as "
                    '{"resume": {"decisions": [{"type": "approve"}]}}.'
                ),
            )
        if not _resume_value(command) or kwargs.get("input") is not None:
            raise _forbidden("Only a resume of a pending approval is allowed (no goto, no update).")
        if thread_id is None:
            raise _forbidden("A resume names the thread whose approval it answers.")
        tenant, request_key = await check_resume(who, str(thread_id))
        run_tenant(kwargs, tenant)
        bind_resume(command, request_key, who)
        return visible_threads(who)
    if who.role not in ("clerk", "admin"):
        raise _forbidden(
            f"A {who.role} may only resume a pending approval, not start or continue runs."
        )
    run_input = kwargs.get("input")
    if run_input is None and who.role != "admin":
        # A run with no input goes on from the thread's last checkpoint: finishing a run
        # that stopped is an operator's job (an admin's run, or `payables continue`). On a
        # copy of a thread paused for approval (`POST /threads/{id}/copy`, which auth sees
        # only as a thread created) it asked for the same payment's approval again, with
        # an audit trail starting at the approval: no request, route or plan on record.
        raise _forbidden(
            "A clerk's run carries a request (input); going on from a thread's last "
            "checkpoint is for an admin (or `payables continue` on the CLI)."
        )
    if who.role != "admin" and (thread_id is None or kwargs.get("temporary")):
        # A thread-less run's thread is deleted when the run ends (on_completion "delete",
        # the default), also when it ends paused for approval: the run index would list a
        # request nobody can answer.
        raise Auth.exceptions.HTTPException(
            status_code=422,
            detail=(
                "A request runs on a thread that stays: its approval waits there. Create a "
                "thread (POST /threads) and start the run on it."
            ),
        )
    if run_input is not None and not isinstance(run_input, Mapping):
        # The graph would fail on it after the run was accepted (a traceback in the server
        # log, with the request text in it), not say what to send.
        raise Auth.exceptions.HTTPException(
            status_code=422,
            detail=(
                f"input must be an object, got {type(run_input).__name__}: send "
                '{"request": "Validate INV-1001", "user": "<your identity>"}.'
            ),
        )
    if isinstance(run_input, Mapping) and not (
        isinstance(run_input.get("request"), str) and run_input["request"].strip()
    ):
        # Run, the graph refuses it, but the thread is then used up by a request nobody made.
        raise Auth.exceptions.HTTPException(
            status_code=422,
            detail=(
                "input.request must be the request's text, such as "
                '{"request": "Validate INV-1001", "user": "<your identity>"}.'
            ),
        )
    if run_input is not None and (problem := unstorable_input(run_input)):
        raise Auth.exceptions.HTTPException(status_code=422, detail=problem)
    if isinstance(run_input, Mapping) and run_input.get("user") != who.identity:
        raise _forbidden(
            f"input.user must be your own identity {who.identity!r} (got "
            f"{str(run_input.get('user'))[:64]!r}); the requester is who the token says."
        )
    if run_input is not None and thread_id is not None:
        await check_unused_thread(who, str(thread_id))
    tenant = who.tenant
    if run_input is None and thread_id is not None and who.role == "admin":
        # An admin's run with no input finishes a thread's run (after a crash, say), which
        # may be another tenant's: its audit rows, run index and costs stay that tenant's.
        # A clerk only reaches their own threads, which are the token's tenant's.
        tenant = await thread_tenant(str(thread_id)) or tenant
    run_tenant(kwargs, tenant)
    metadata = value.get("metadata")
    if isinstance(metadata, dict):
        # A run that creates its thread (if_not_exists="create") gives it this metadata.
        metadata.update(owner=who.identity, tenant=who.tenant)
    return visible_threads(who)


def unstorable_input(value: Any, where: str = "input") -> str | None:
    """Why Postgres could not store the run's input, naming the field; None if it can.

    The server writes the input in its first checkpoint, after the run is accepted: a NUL
    or a lone surrogate there fails that write with an internal error. Refused up front.
    """
    if isinstance(value, str):
        return unstorable_reason(value, where)
    if isinstance(value, Mapping):
        items: Iterable[tuple[str, Any]] = ((f"{where}.{key}", item) for key, item in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{where}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for name, item in items:
        if (isinstance(name, str) and (problem := unstorable_reason(name, "field name"))) or (
            problem := unstorable_input(item, name)
        ):
            return problem
    return None


def run_tenant(kwargs: dict[str, Any], tenant: str) -> None:
    """Run the graph for ``tenant``: its audit chain, run index and cost caps are that tenant's.

    The server hands ``kwargs["context"]`` to the graph as its `Context` (and mirrors it in
    ``config.configurable``); callers cannot set it (`run_settings`), the token decides.
    """
    context = kwargs.get("context")
    if isinstance(context, dict):
        context["tenant"] = tenant
    else:
        kwargs["context"] = {"tenant": tenant}
    configurable = (kwargs.get("config") or {}).get("configurable")
    if isinstance(configurable, dict):
        configurable["tenant"] = tenant


def _database_uri() -> str:
    from state.db import database_uri  # the agent's settings: PAYABLES_DATABASE_URI first

    return database_uri()


async def _thread_use(thread_id: str) -> tuple[dict[str, Any] | None, bool]:
    """The thread's run index row and whether the agent's checkpoints hold anything of it.

    The row holds requester and tenant; None: no request routed on the thread yet.
    """
    async with await psycopg.AsyncConnection.connect(
        _database_uri(), row_factory=dict_row, autocommit=True
    ) as conn:
        cur = await conn.execute(
            "SELECT r.requester, r.tenant,"
            " EXISTS (SELECT 1 FROM checkpoints WHERE thread_id = %(id)s) AS checkpointed"
            " FROM (SELECT 1) AS one LEFT JOIN runs AS r ON r.thread_id = %(id)s",
            {"id": thread_id},
        )
        row = await cur.fetchone()
    assert row is not None  # the outer join always answers one row
    run = None if row["requester"] is None else {k: row[k] for k in ("requester", "tenant")}
    return run, bool(row["checkpointed"])


def _someone_elses(who: Identity, run: Mapping[str, Any] | None) -> bool:
    """Whether the run index row ``run`` records another requester's request than ``who``'s."""
    return run is not None and (run["requester"], run["tenant"]) != (who.identity, who.tenant)


async def thread_tenant(thread_id: str) -> str | None:
    """The tenant the run index records for ``thread_id`` (None: no request on it yet)."""
    run, _ = await _thread_use(thread_id)
    return None if run is None else str(run["tenant"])


async def check_thread_id_free(who: Identity, thread_id: str) -> None:
    """Raise 409 if a thread created under ``thread_id`` would take over the agent's records.

    The server's list of threads and the agent's records are kept apart: a `payables run`
    thread is on no server list, and a `langgraph dev` started in another directory has
    lost its list. Created on the server under such an id, a thread named its creator its
    owner, who then read the request (a bank account typed for a change, another tenant's)
    and could run on it. The requester the run index records may register their own.
    """
    run, checkpointed = await _thread_use(thread_id)
    if _someone_elses(who, run) or (run is None and checkpointed):
        raise Auth.exceptions.HTTPException(
            status_code=409,
            detail=f"Thread id {thread_id} is already in use. Create the thread without a "
            "thread_id and the server chooses a new one.",
        )


async def check_unused_thread(who: Identity, thread_id: str) -> None:
    """Raise 409 if ``thread_id`` already holds a request, 404 if it is someone else's.

    Each thread is one request's: new input on a used thread would merge into its state
    (the request text replaced under the old plan, approvals and run index row) and skip the
    cost cap's admission; the saver and the router refuse it too, before the input is saved.
    A thread that has checkpoints and no run index row yet holds a request still on its way
    to the router (sent twice, say). Another requester's thread gets the 404 an unknown
    thread gets, whatever the server's list says of its owner (see `check_thread_id_free`).
    """
    run, checkpointed = await _thread_use(thread_id)
    if who.role != "admin" and _someone_elses(who, run):
        raise Auth.exceptions.HTTPException(
            status_code=404, detail="Thread or assistant not found."
        )
    if run is not None or checkpointed:
        raise Auth.exceptions.HTTPException(
            status_code=409,
            detail=f"Thread {thread_id} already holds a request; a thread is one request's. "
            "Start the new request on a new thread.",
        )


# How LangGraph tells a resume keyed by interrupt id from a single answer (its Pregel loop
# reads a dict whose every key is an xxh3-128 hex digest as a map of answers).
_INTERRUPT_ID = re.compile(r"[0-9a-f]{32}")


def bind_resume(command: dict[str, Any], request_key: str, who: Identity) -> None:
    """Bind the resume answer in ``command`` to the request it answers and to ``who`` gave it.

    The run waits in the server's queue behind any other run on the thread. Should one of
    those change the request first (an edit, a first signature of two), the approval node
    refuses this answer (`nodes.approval.answering`) instead of applying "approve" to
    arguments the reviewer never saw. Whoever gave the answer is judged as its reviewer
    whenever the node reads it, also in a later run of another caller. Both are set here,
    over anything the caller sent. Answers keyed by interrupt id (the inbox's) are bound one
    by one; anything else is left for the node to refuse as malformed.
    """
    resume = command.get("resume")
    if not isinstance(resume, Mapping) or not resume:
        return
    binding = {
        ANSWERS_REQUEST: request_key,
        ANSWERED_BY: {"id": who.identity, "role": APPROVAL_ROLES.get(who.role, "")},
    }
    if all(isinstance(k, str) and _INTERRUPT_ID.fullmatch(k) for k in resume):
        command["resume"] = {
            key: {**answer, **binding} if isinstance(answer, Mapping) else answer
            for key, answer in resume.items()
        }
    else:
        command["resume"] = {**resume, **binding}


class AnswerRefused(Auth.exceptions.HTTPException):
    """A 403 for an answer to an approval request the caller may see (recorded as refused)."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=403, detail=detail)


async def check_resume(who: Identity, thread_id: str) -> tuple[str, str]:
    """The thread's tenant and its pending approval request's key (its audit event's).

    Raises 403 unless ``who`` may answer that request, and 409 while another reviewer's
    answer to it, accepted here, waits to be applied (`state.answer_claims`): the request is
    claimed for each answer accepted.

    A thread of another tenant gets the refusal a thread that does not exist gets: nothing
    of its state reaches a caller who may not read it. A thread whose answer already
    committed (the run index says running since, because the process died before the
    checkpoint or the run is still going) is refused saying who answered and how the run
    is finished: that answer stands, as `payables resume` says on the CLI.

    Each 403 for a request the caller may see (their own request, a role that cannot sign,
    a second signature of theirs) is recorded in the thread's audit chain
    (`answer_refused`), after the check's transaction, and the claim it took, roll back.
    """
    try:
        return await _checked_resume(who, thread_id)
    except AnswerRefused as refusal:
        async with await psycopg.AsyncConnection.connect(
            _database_uri(), row_factory=dict_row, autocommit=True
        ) as conn:
            await record_refused_answer(
                conn,
                thread_id,
                reviewer={"id": who.identity, "role": APPROVAL_ROLES.get(who.role, who.role)},
                reason=str(refusal.detail),
            )
        raise


async def _checked_resume(who: Identity, thread_id: str) -> tuple[str, str]:
    """`check_resume` less the record of its refusals."""
    async with (
        await psycopg.AsyncConnection.connect(
            _database_uri(), row_factory=dict_row, autocommit=True
        ) as conn,
        conn.transaction(),  # a refusal raised in here rolls the claim back
    ):
        asked = await latest_approval_request(conn, thread_id)
        # Claimed before the run index is read: an answer the node commits after this sees
        # the claim, and one it committed before (releasing its own) shows below.
        claim = (
            await claim_answer(
                conn,
                tenant=asked["tenant"],
                request_key=asked["event_key"],
                thread_id=thread_id,
                reviewer=who.identity,
            )
            if asked is not None
            else None
        )
        cur = await conn.execute(
            "SELECT requester, tenant, status FROM runs WHERE thread_id = %s", (thread_id,)
        )
        run = await cur.fetchone()
        answers: list[dict[str, Any]] = []
        if run is not None and run["status"] == "running" and asked is not None:
            # The decisions the approval node committed with its answer to the last request.
            cur = await conn.execute(
                "SELECT payload->>'reviewer_id' AS reviewer, payload->>'decision' AS decision"
                " FROM audit_events WHERE thread_id = %s AND kind = 'decision' AND seq > %s"
                " ORDER BY seq",
                (thread_id, asked["seq"]),
            )
            answers = list(await cur.fetchall())
        try:
            return _accepted_resume(who, thread_id, run, asked, answers, claim)
        except Auth.exceptions.HTTPException as refusal:
            # "No approval waiting" is also what a thread the caller may not see gets.
            if refusal.status_code != 403 or refusal.detail == _no_approval(thread_id):
                raise
            raise AnswerRefused(str(refusal.detail)) from None


def _no_approval(thread_id: str) -> str:
    """The refusal a thread with no approval waiting gets, and one the caller may not see."""
    return f"Thread {thread_id} has no approval waiting for a decision."


def _accepted_resume(
    who: Identity,
    thread_id: str,
    run: Mapping[str, Any] | None,
    asked: Mapping[str, Any] | None,
    answers: list[dict[str, Any]],
    claim: AnswerClaim | None,
) -> tuple[str, str]:
    """`check_resume`'s verdict on what it read: the tenant and request key, or a refusal."""
    nothing = _forbidden(_no_approval(thread_id))
    if run is None or (run["tenant"] != who.tenant and who.role != "admin"):
        raise nothing
    if answers:
        answered = "; ".join(f"{a['reviewer']}: {a['decision']}" for a in answers)
        raise _forbidden(
            f"Thread {thread_id}'s approval was already answered ({answered}) and the run has "
            "not finished since: the process stopped before it went on, or it is going on "
            "now. That answer stands; this one was not recorded. If no run is in progress, "
            "an admin finishes the run from the recorded answer with a run on the thread "
            f"and no input (or `payables continue {thread_id}` on the CLI)."
        )
    if run["status"] != "interrupted" or asked is None:
        raise nothing
    if run["requester"] == who.identity:
        raise _forbidden(
            f"{who.identity} started thread {thread_id} and cannot decide its approval; "
            "another reviewer must."
        )
    role = APPROVAL_ROLES.get(who.role, "")
    requester = run["requester"]
    for requirement in asked["payload"].get("requirements", []):
        needed = requirement.get("required_role")
        if not needed or role == needed:
            continue
        approved_by = requirement.get("approved_by", [])
        if any(a.get("role") == needed and a.get("id") != requester for a in approved_by):
            continue
        signed = {a.get("id") for a in approved_by if a.get("id") != requester}
        if len(signed) + 1 >= int(requirement.get("min_approvers", 1)):
            if who.identity in signed:
                # Said first: signing again is what they tried, whatever their role.
                raise _forbidden(
                    f"{who.identity} already approved {requirement.get('tool')} on thread "
                    f"{thread_id}; the same reviewer counts once, so the last signature, a "
                    f"{needed}'s, must come from another reviewer."
                )
            raise _forbidden(
                f"{requirement.get('tool')} needs a {needed}'s signature and only one more "
                f"approver is required; a {who.role} cannot give it."
            )
    if claim is not None:
        raise Auth.exceptions.HTTPException(
            status_code=409,
            detail=(
                f"{claim.reviewer}'s answer to this approval on thread {thread_id} was accepted "
                f"at {claim.claimed_at:%H:%M:%S %Z} and is being applied; yours was not sent. "
                "Read the thread again when that run ends: the approval is then answered, or "
                "waiting on a new request (a second signature, an edit) that you can answer. "
                f"If no run is in progress on the thread, answer again after "
                f"{claim.expires_at:%H:%M:%S %Z}."
            ),
        )
    return str(run["tenant"]), str(asked["event_key"])
