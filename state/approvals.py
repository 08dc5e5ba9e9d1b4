"""The approval interrupt's request and resume shapes, and resume validation.

The request follows LangChain v1's human-in-the-loop shape (`action_requests` and
`review_configs` with allowed decisions) plus `evidence` for the reviewer. The resume
value is ``{"decisions": [...], "reviewer": {"id": ..., "role": ...}}`` with one decision
per action request: ``{"type": "approve"}``, ``{"type": "edit", "edited_action":
{"name": ..., "args": {...}}}`` or ``{"type": "reject", "message": "why"}``.
Validation lives here so the CLI can refuse a bad resume before sending it and the
approval node can refuse one that arrives through the server API.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal, TypedDict

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from runtime.errors import ResumeError, shown

DecisionType = Literal["approve", "edit", "reject"]
REVIEWER_ROLES = ("clerk", "approver", "controller")

ANSWERS_REQUEST = "answers_request"
"""The field of a resume value naming the approval request it answers (the request's audit
event key). The LangGraph server sets it when it accepts a reviewer's resume
(`server.auth.bind_resume`); the approval node refuses an answer bound to another request
(`nodes.approval.answering`) and drops the field before the value is parsed."""

ANSWERED_BY = "answered_by"
"""The field of a resume value naming who gave it, set where it is delivered: the reviewer
the LangGraph server verified (`server.auth.bind_resume`), or null for a CLI answer, whose
reviewer is the one its body names. The approval node judges each answer as the one who
gave it (`nodes.approval.answered_by`). LangGraph hands a node every answer its task was
given, refused ones first, whenever it runs again; judged as the caller of the run at hand,
a refused answer would be recorded as theirs."""


class ActionRequest(TypedDict):
    """One proposed call awaiting a decision."""

    name: str
    args: dict[str, Any]
    description: str


class ReviewConfig(TypedDict):
    """Which decisions a reviewer may make on an action."""

    action_name: str
    allowed_decisions: list[DecisionType]


class StepRequirement(TypedDict):
    """Who must approve a step, and who already has."""

    step_id: str
    tool: str
    tier: str
    min_approvers: int
    required_role: str | None
    reasons: list[str]
    approved_by: list[dict[str, str]]


class ApprovalRequest(TypedDict):
    """The payload of the approval interrupt."""

    action_requests: list[ActionRequest]
    review_configs: list[ReviewConfig]
    evidence: list[dict[str, Any]]
    steps: list[StepRequirement]
    requester: str
    request: str
    error: str | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _printable_id(value: str) -> str:
    # An id is shown to people and stored: no controls, NUL, bidi overrides or bytes that
    # are not UTF-8 (Python's lone surrogates), which Postgres refuses or a terminal obeys.
    if not value.isprintable():
        raise ValueError("must be printable characters only (no control or format characters)")
    return value


def _plain_text(value: str) -> str:
    # Free text is stored in Postgres (which refuses NUL) and shown in terminals.
    bad = [c for c in value if unicodedata.category(c) in {"Cc", "Cs"} and c not in "\n\r\t"]
    if bad:
        raise ValueError(f"contains {len(bad)} control or non-UTF-8 character(s); send plain text")
    return value


class ReviewerIn(_Strict):
    """Who decides."""

    id: Annotated[str, AfterValidator(_printable_id)] = Field(
        min_length=1, max_length=128, pattern=r"^\S+$"
    )
    role: Literal["clerk", "approver", "controller"] = "approver"


class EditedAction(_Strict):
    """The action as the reviewer edited it."""

    name: str
    args: dict[str, Any]


class DecisionIn(_Strict):
    """One decision."""

    type: DecisionType
    edited_action: EditedAction | None = None
    message: Annotated[str, AfterValidator(_plain_text)] | None = Field(
        default=None, max_length=2000
    )


class ResumeIn(_Strict):
    """The whole resume value."""

    decisions: list[DecisionIn] = Field(min_length=1)
    reviewer: ReviewerIn


def parse_resume(value: Any, request: ApprovalRequest) -> ResumeIn:
    """Validate a resume value against the pending request; raise `ResumeError` if unusable."""
    try:
        resume = ResumeIn.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{shown('.'.join(str(p) for p in e['loc'])) or '(value)'}: {shown(e['msg'], 200)}"
            for e in exc.errors(include_url=False)
        )
        raise ResumeError(
            f"Malformed resume: {problems}. Expected "
            '{"decisions": [{"type": "approve"}], "reviewer": {"id": "...", "role": "controller"}}.'
        ) from exc
    actions = request["action_requests"]
    if len(resume.decisions) != len(actions):
        raise ResumeError(
            f"Got {len(resume.decisions)} decision(s) for {len(actions)} pending action(s) "
            f"({', '.join(a['name'] for a in actions)}); send one decision per action, in order."
        )
    reviewer = resume.reviewer
    if reviewer.id == request["requester"]:
        raise ResumeError(
            f"{shown(reviewer.id)} made this request and cannot also approve, edit or reject it; "
            "another reviewer must decide."
        )
    for index, (decision, action, config, step) in enumerate(
        zip(resume.decisions, actions, request["review_configs"], request["steps"], strict=True),
        start=1,
    ):
        if decision.type not in config["allowed_decisions"]:
            raise ResumeError(
                f"Decision {index}: {decision.type!r} is not allowed for "
                f"{action['name']}; allowed: {config['allowed_decisions']}."
            )
        if decision.type == "edit":
            if decision.edited_action is None:
                raise ResumeError(
                    f"Decision {index}: an edit needs edited_action "
                    '{"name": ..., "args": {...}}.'
                )
            if decision.edited_action.name != action["name"]:
                raise ResumeError(
                    f"Decision {index}: edited_action.name must stay "
                    f"{action['name']!r}, got {decision.edited_action.name!r}."
                )
        if decision.type == "reject" and not (decision.message or "").strip():
            raise ResumeError(f"Decision {index}: a rejection needs a message saying why.")
        if decision.type in ("approve", "edit") and any(
            a["id"] == reviewer.id for a in step["approved_by"]
        ):
            role = step["required_role"]
            role_signed = any(a["role"] == role for a in step["approved_by"])
            missing = f"a {role}'s signature" if role and not role_signed else "the next signature"
            raise ResumeError(
                f"{shown(reviewer.id)} already approved {action['name']}; the same reviewer "
                f"counts once, so {missing} must come from a different reviewer."
            )
    return resume
