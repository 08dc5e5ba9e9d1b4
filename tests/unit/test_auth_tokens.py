"""server/auth.py without a server: token sources, fail-closed refusals, JWT claims, and the
approval node's use of the server-verified reviewer (nodes/approval.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from langgraph_sdk import Auth

from nodes.approval import answered_by, verified_reviewer, with_verified_reviewer
from runtime.errors import ResumeError
from server.auth import (
    AuthConfigError,
    Identity,
    bind_resume,
    create_run,
    jwt_settings,
    resume_extras,
    run_settings,
    run_tenant,
    token_table,
    update_thread,
    verify_token,
)
from state.approvals import ApprovalRequest, StepRequirement

SECRET = "unit-secret-" + "z" * 32
JWT_ENV = {
    "PAYABLES_JWT_SECRET": SECRET,
    "PAYABLES_JWT_ISSUER": "iss-1",
    "PAYABLES_JWT_AUDIENCE": "aud-1",
}


def refusal(token: str, environ: dict[str, str]) -> str:
    """The 401 detail ``verify_token`` raises for ``token`` under ``environ``."""
    with pytest.raises(Auth.exceptions.HTTPException) as error:
        verify_token(token, environ)
    assert error.value.status_code == 401
    return str(error.value.detail)


def test_no_token_source_refuses_everything_and_says_how_to_configure() -> None:
    detail = refusal("anything", {})
    assert "No tokens are configured" in detail
    for setting in ("PAYABLES_AUTH_TOKENS", "PAYABLES_AUTH_TOKENS_FILE", "PAYABLES_JWT_SECRET"):
        assert setting in detail


def test_token_table_from_env_and_unknown_token() -> None:
    env = {
        "PAYABLES_AUTH_TOKENS": json.dumps(
            {"t1": {"identity": "ctl-1", "role": "controller", "tenant": "default"}}
        )
    }
    assert verify_token("t1", env) == Identity("ctl-1", "controller", "default")
    assert "not a known token" in refusal("t2", env)


def test_token_file_is_reread_so_rotation_needs_no_restart(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    env = {"PAYABLES_AUTH_TOKENS_FILE": str(path)}
    path.write_text(json.dumps({"old": {"identity": "rev-1", "role": "reviewer", "tenant": "t"}}))
    assert verify_token("old", env).identity == "rev-1"
    path.write_text(json.dumps({"new": {"identity": "rev-1", "role": "reviewer", "tenant": "t"}}))
    assert "not a known token" in refusal("old", env)
    assert verify_token("new", env).role == "reviewer"


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "is not JSON"),
        ('{"t": {"identity": "a", "role": "boss", "tenant": "x"}}', "role must be one of"),
        ('{"t": {"identity": "", "role": "clerk", "tenant": "x"}}', "identity"),
        ('{"t": {"identity": "a", "role": "clerk"}}', "tenant"),
    ],
)
def test_unusable_token_table_refuses_and_logs_the_reason(
    table: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    detail = refusal("t", {"PAYABLES_AUTH_TOKENS": table})
    assert "configuration is unusable" in detail and "server's log" in detail
    assert problem not in detail  # the operator's to read, not an anonymous caller's
    assert problem in caplog.text


def test_missing_token_file_is_logged_with_its_path_not_told_to_the_caller(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "nope.json"
    detail = refusal("t", {"PAYABLES_AUTH_TOKENS_FILE": str(missing)})
    assert str(missing) not in detail and str(missing) in caplog.text
    assert token_table({}) is None


def test_both_token_sources_set_is_refused_not_half_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"f": {"identity": "rev-1", "role": "reviewer", "tenant": "t"}}))
    env = {
        "PAYABLES_AUTH_TOKENS": json.dumps(
            {"e": {"identity": "rev-2", "role": "reviewer", "tenant": "t"}}
        ),
        "PAYABLES_AUTH_TOKENS_FILE": str(path),
    }
    for token in ("e", "f"):
        assert "configuration is unusable" in refusal(token, env)
    assert "both set; set one of them" in caplog.text


def test_jwt_needs_issuer_and_audience_configured() -> None:
    assert "configuration is unusable" in refusal("t", {"PAYABLES_JWT_SECRET": SECRET})
    with pytest.raises(AuthConfigError, match="PAYABLES_JWT_ISSUER"):
        jwt_settings({"PAYABLES_JWT_SECRET": SECRET})


def signed(**claims: Any) -> str:
    body = {
        "sub": "clerk-jay",
        "role": "clerk",
        "tenant": "default",
        "iss": "iss-1",
        "aud": "aud-1",
        "exp": int(time.time()) + 60,
        **claims,
    }
    return jwt.encode({k: v for k, v in body.items() if v is not None}, SECRET, "HS256")


def test_jwt_claims_become_the_identity() -> None:
    assert verify_token(signed(), JWT_ENV) == Identity("clerk-jay", "clerk", "default")


@pytest.mark.parametrize(
    ("claims", "problem"),
    [
        ({"aud": "other"}, "audience"),
        ({"iss": "other"}, "issuer"),
        ({"exp": int(time.time()) - 5}, "expired"),
        ({"exp": None}, "exp"),
        ({"sub": None}, "sub"),
        ({"role": "root"}, "role"),
    ],
)
def test_bad_jwt_claims_are_refused(claims: dict[str, Any], problem: str) -> None:
    assert problem in refusal(signed(**claims), JWT_ENV).lower()


def test_unsigned_or_other_algorithm_jwt_is_refused() -> None:
    unsigned = jwt.encode(
        {
            "sub": "x",
            "role": "admin",
            "tenant": "t",
            "iss": "iss-1",
            "aud": "aud-1",
            "exp": int(time.time()) + 60,
        },
        None,
        "none",
    )
    assert "invalid token" in refusal(unsigned, JWT_ENV).lower()


def test_run_settings_names_context_fields_only() -> None:
    kwargs: dict[str, Any] = {
        "context": {"dual_control_threshold": "1"},
        "config": {"configurable": {"tenant": "x", "langgraph_request_id": "r", "thread_id": "t"}},
    }
    assert run_settings(kwargs) == {"dual_control_threshold", "tenant"}
    assert run_settings({"config": {"configurable": {"thread_id": "t"}}}) == set()


def test_run_tenant_sets_context_and_configurable() -> None:
    kwargs: dict[str, Any] = {"context": {}, "config": {"configurable": {"x": 1}}}
    run_tenant(kwargs, "acme")
    assert kwargs["context"] == {"tenant": "acme"}
    assert kwargs["config"]["configurable"] == {"x": 1, "tenant": "acme"}


def sdk_resume(**changes: Any) -> dict[str, Any]:
    """The `create_run` value langgraph-api 0.16.7 builds for a plain reviewer resume
    (captured from `runs.create/wait/stream(..., command={"resume": ...})` and the inbox),
    with top-level ``changes`` and ``kw_*`` changes to its ``kwargs``."""
    kwargs: dict[str, Any] = {
        "input": None,
        "command": {"resume": {"i-1": {"decisions": [{"type": "approve"}]}}},
        "config": {
            "configurable": {
                "langgraph_auth_user": object(),
                "langgraph_auth_user_id": "rev-1",
                "langgraph_auth_permissions": ["reviewer"],
                "langgraph_request_id": "r-1",
                "__request_start_time_ms__": 1,
                "__after_seconds__": 0,
            }
        },
        "context": {},
        "stream_mode": ["values"],
        "interrupt_before": None,
        "interrupt_after": None,
        "webhook": None,
        "feedback_keys": None,
        "temporary": False,
        "subgraphs": False,
        "resumable": False,
        "checkpoint_during": True,
        "durability": "async",
    }
    value: dict[str, Any] = {
        "thread_id": "t-1",
        "assistant_id": "a-1",
        "run_id": "r-1",
        "status": "pending",
        "metadata": {},
        "prevent_insert_if_inflight": False,
        "multitask_strategy": "enqueue",
        "if_not_exists": "reject",
        "after_seconds": 0,
        "kwargs": kwargs,
    }
    for key, change in changes.items():
        if key.startswith("kw_"):
            kwargs[key[3:]] = change
        else:
            value[key] = change
    return value


def test_a_plain_resume_and_how_it_is_watched_carry_nothing_extra() -> None:
    assert resume_extras(sdk_resume()) == []
    watched = sdk_resume(kw_stream_mode=["updates", "debug"], kw_subgraphs=True, kw_resumable=True)
    assert resume_extras(watched) == []
    # Headers the operator's configurable_headers copy in are not the caller's config.
    headers = sdk_resume()
    headers["kwargs"]["config"]["configurable"].update({"x-request-id": "1", "user-agent": "u"})
    assert resume_extras(headers) == []
    assert resume_extras(sdk_resume(multitask_strategy="reject")) == []


def test_resume_extras_name_what_changes_the_run() -> None:
    fork = sdk_resume()
    fork["kwargs"]["config"]["configurable"]["checkpoint_id"] = "c-0"
    assert resume_extras(fork) == ["checkpoint_id"]
    tracer = sdk_resume()
    tracer["kwargs"]["config"]["configurable"]["__langsmith_project__"] = "elsewhere"
    assert resume_extras(tracer) == ["langsmith_tracer"]
    assert resume_extras(sdk_resume(kw_webhook="https://hooks.example/x")) == ["webhook"]
    assert resume_extras(sdk_resume(kw_feedback_keys=["k"])) == ["feedback_keys"]
    assert resume_extras(sdk_resume(kw_temporary=True)) == ["on_completion"]
    assert resume_extras(sdk_resume(kw_checkpoint_during=False)) == ["checkpoint_during"]
    assert resume_extras(sdk_resume(multitask_strategy="interrupt")) == ["multitask_strategy"]
    # The server mirrors `context` into `configurable` (marked) and `configurable` into
    # `context`: the name says which one the caller sent.
    sent_context = sdk_resume(kw_context={"tenant": "acme"})
    sent_context["kwargs"]["config"]["configurable"].update(
        {"tenant": "acme", "__context_provided__": True}
    )
    assert resume_extras(sent_context) == ["context.tenant"]
    sent_config = sdk_resume(kw_context={"thread_id": "t-2"})
    sent_config["kwargs"]["config"]["configurable"]["thread_id"] = "t-2"
    assert resume_extras(sent_config) == ["config.configurable.thread_id"]


@pytest.mark.parametrize("role", ["reviewer", "controller"])
async def test_create_run_refuses_a_resume_with_run_options(role: str) -> None:
    """Refused before the database is read: the thread need not exist."""
    ctx = context(role, "create_run")
    with pytest.raises(Auth.exceptions.HTTPException) as error:
        await create_run(ctx, sdk_resume(kw_interrupt_before=["executor"]))  # type: ignore[arg-type]
    assert error.value.status_code == 403
    assert "interrupt_before" in str(error.value.detail)
    assert "may only send the resume answer" in str(error.value.detail)


class _ServerUser(dict[str, str]):
    """Shaped like the server's user: ``identity`` attribute and item access."""

    @property
    def identity(self) -> str:
        return self["identity"]


def context(role: str, action: str = "update") -> Auth.types.AuthContext:
    """The server's auth context for a ``role`` token of tenant ``default``."""
    user = _ServerUser(identity=f"{role}-1", role=role, tenant="default")
    return Auth.types.AuthContext(
        user=user,  # type: ignore[arg-type]
        permissions=[role],
        resource="threads",
        action=action,  # type: ignore[arg-type]
    )


async def test_only_an_admin_writes_thread_state() -> None:
    """A state write (the update event without metadata or action) would let a clerk name
    another requester and skip create_run's checks; metadata and cancels stay theirs."""
    state_write: Any = {"thread_id": "t-1"}
    for role, says in (
        ("clerk", "start a run"),
        ("reviewer", "resume the approval"),
        ("controller", "resume the approval"),
    ):
        with pytest.raises(Auth.exceptions.HTTPException) as error:
            await update_thread(context(role), state_write)
        assert error.value.status_code == 403 and says in str(error.value.detail)
    assert await update_thread(context("admin"), state_write) is None
    own = {"owner": "clerk-1", "tenant": "default"}
    assert await update_thread(context("clerk"), {"thread_id": "t-1", "metadata": {"n": 1}}) == own
    cancel: Any = {"thread_id": "t-1", "action": "interrupt", "metadata": {"run_ids": None}}
    assert await update_thread(context("clerk"), cancel) == own


# --- the approval node's side ------------------------------------------------------------


class _ProxyLikeUser:
    """Shaped like langgraph_api's ProxyUser: attributes plus ``dict()``."""

    def __init__(self, **fields: str) -> None:
        self.fields = fields

    def dict(self) -> dict[str, str]:
        return dict(self.fields)


def dual_request(approved_by: list[dict[str, str]]) -> ApprovalRequest:
    step = StepRequirement(
        step_id="s1",
        tool="schedule_payment",
        tier="irreversible",
        min_approvers=2,
        required_role="controller",
        reasons=["over dual"],
        approved_by=approved_by,
    )
    return ApprovalRequest(
        action_requests=[],
        review_configs=[],
        evidence=[],
        steps=[step],
        requester="clerk-ben",
        request="Pay INV-1020",
        error=None,
    )


def test_no_server_user_keeps_the_cli_reviewer() -> None:
    assert verified_reviewer({}) is None
    assert verified_reviewer({"langgraph_auth_user": None}) is None


def test_server_user_replaces_the_reviewer_in_the_body() -> None:
    user = _ProxyLikeUser(identity="rev-1", role="reviewer", tenant="default")
    verified = verified_reviewer({"langgraph_auth_user": user})
    assert verified == {"id": "rev-1", "role": "approver"}
    body = {"decisions": [{"type": "approve"}], "reviewer": {"id": "ctl-9", "role": "controller"}}
    assert with_verified_reviewer(body, verified, dual_request([]))["reviewer"] == verified
    # Plain dicts (a user stored by a serialising runtime) work the same way.
    as_dict = {"identity": "ctl-1", "role": "controller", "tenant": "default"}
    assert verified_reviewer({"langgraph_auth_user": as_dict}) == {
        "id": "ctl-1",
        "role": "controller",
    }


def test_clerk_token_cannot_decide() -> None:
    verified = verified_reviewer(
        {"langgraph_auth_user": {"identity": "clerk-ana", "role": "clerk", "tenant": "t"}}
    )
    assert verified is not None
    with pytest.raises(ResumeError, match="no reviewer role"):
        with_verified_reviewer({"decisions": []}, verified, dual_request([]))


def test_last_missing_signature_above_dual_control_must_be_the_controllers() -> None:
    approver = {"id": "rev-2", "role": "approver"}
    first = dual_request([])
    assert with_verified_reviewer({}, approver, first)["reviewer"] == approver
    second = dual_request([{"id": "rev-1", "role": "approver"}])
    with pytest.raises(ResumeError, match="controller's signature"):
        with_verified_reviewer({}, approver, second)
    controller = {"id": "ctl-1", "role": "controller"}
    assert with_verified_reviewer({}, controller, second)["reviewer"] == controller
    after_controller = dual_request([{"id": "ctl-1", "role": "controller"}])
    assert with_verified_reviewer({}, approver, after_controller)["reviewer"] == approver


def test_an_admin_token_signs_as_an_approver_never_as_the_controller() -> None:
    admin = {"identity": "ops-1", "role": "admin", "tenant": "default"}
    verified = verified_reviewer({"langgraph_auth_user": admin})
    assert verified == {"id": "ops-1", "role": "approver"}
    with pytest.raises(ResumeError, match="controller's signature"):
        with_verified_reviewer({}, verified, dual_request([{"id": "rev-1", "role": "approver"}]))


def test_the_requesters_own_controller_signature_does_not_stand_in_for_one() -> None:
    """The gate never counts the requester; an approver is not let in as the last signature
    because the request's maker, a controller, is among those who signed."""
    approver = {"id": "rev-2", "role": "approver"}
    by_requester = dual_request(
        [{"id": "clerk-ben", "role": "controller"}, {"id": "rev-1", "role": "approver"}]
    )
    with pytest.raises(ResumeError, match="controller's signature"):
        with_verified_reviewer({}, approver, by_requester)


def test_a_resume_is_bound_to_the_request_it_answers_and_its_giver_over_what_was_sent() -> None:
    who = Identity("rev-1", "reviewer", "default")
    answer = {"decisions": [{"type": "approve"}], "reviewer": {"id": "ctl-9"}}
    binding = {"answers_request": "k1", "answered_by": {"id": "rev-1", "role": "approver"}}
    forged = {"answers_request": "forged", "answered_by": {"id": "ctl-9", "role": "controller"}}
    plain = {"resume": {**answer, **forged}}
    bind_resume(plain, "k1", who)
    assert plain["resume"] == {**answer, **binding}
    keyed = {"resume": {"a" * 32: {**answer, **forged}}}  # the inbox answers by interrupt id
    bind_resume(keyed, "k1", who)
    assert keyed["resume"] == {"a" * 32: {**answer, **binding}}
    # Keys that are not interrupt ids make one answer, as LangGraph reads it.
    single = {"resume": {"reviewer": {"id": "rev-1"}}}
    bind_resume(single, "k1", who)
    assert single["resume"] == {"reviewer": {"id": "rev-1"}, **binding}
    for malformed in (None, [], "approve"):  # left for the approval node to refuse
        command: dict[str, object] = {"resume": malformed}
        bind_resume(command, "k1", who)
        assert command["resume"] == malformed


def test_an_answer_is_judged_as_the_one_who_gave_it() -> None:
    """Server answers carry their verified giver, CLI answers none (their body names their
    reviewer); only an answer from before the field is judged as the caller at hand."""
    answer = {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-2"}}
    caller = {"id": "rev-3", "role": "approver"}
    giver = {"id": "ctl-1", "role": "controller"}
    assert answered_by({**answer, "answered_by": giver}, caller) == (answer, giver)
    assert answered_by({**answer, "answered_by": None}, caller) == (answer, None)
    assert answered_by(answer, caller) == (answer, caller)
    assert answered_by(answer, None) == (answer, None)
    with pytest.raises(ResumeError, match="answered_by names no reviewer"):
        answered_by({**answer, "answered_by": {"id": 7}}, caller)
