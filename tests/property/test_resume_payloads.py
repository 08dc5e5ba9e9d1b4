"""Resume payloads: any value a reviewer, a script or an API client sends is either a
usable decision or a `ResumeError` that says what to fix, and a refused one changes nothing.

Pure properties run `state.approvals.parse_resume` on arbitrary JSON and on mutations of
valid payloads. The graph property answers a real interrupted thread through
`Agent.resume` on Postgres: a refused payload leaves the interrupt pending and writes
no decision and no checkpoint; an accepted one records its decisions and the run goes on.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from runtime.agent import Agent, open_agent
from runtime.errors import BadInput, ResumeError
from state.approvals import ApprovalRequest, ResumeIn, parse_resume
from state.db import Database
from state.world import SAMPLE_WORLD_PATH, load_world, read_world
from tests.property.checks import VALID_STATUSES, assert_no_partial_writes, db_examples, rows
from tests.property.strategies import JSON_VALUES, mutations_of, nasty_text

REQUESTER = "clerk-ana"


def approval_request(
    tools: list[str], approved_by: list[dict[str, str]] | None = None
) -> ApprovalRequest:
    """An approval request shaped like the approval node's, for ``tools``."""
    return ApprovalRequest(
        action_requests=[
            {"name": tool, "args": {"invoice_id": "INV-1001"}, "description": "why"}
            for tool in tools
        ],
        review_configs=[
            {"action_name": tool, "allowed_decisions": ["approve", "edit", "reject"]}
            for tool in tools
        ],
        evidence=[{} for _ in tools],
        steps=[
            {
                "step_id": f"s{i}",
                "tool": tool,
                "tier": "irreversible",
                "min_approvers": 1,
                "required_role": None,
                "reasons": [],
                "approved_by": approved_by or [],
            }
            for i, tool in enumerate(tools, start=1)
        ],
        requester=REQUESTER,
        request="Validate INV-1001 and pay it if it matches",
        error=None,
    )


REQUESTS = st.sampled_from(
    [
        approval_request(["schedule_payment"]),
        approval_request(["schedule_payment", "send_vendor_email"]),
        approval_request(["schedule_payment"], [{"id": "rev-1", "role": "approver"}]),
    ]
)

EDIT_ARGS = {"invoice_id": "INV-1001", "amount": "3340.97", "currency": "USD"}
VALID_PAYLOADS = [
    {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-1", "role": "approver"}},
    {"decisions": [{"type": "reject", "message": "wrong amount"}], "reviewer": {"id": "rev-2"}},
    {
        "decisions": [
            {"type": "edit", "edited_action": {"name": "schedule_payment", "args": EDIT_ARGS}}
        ],
        "reviewer": {"id": "ctl-1", "role": "controller"},
    },
    {
        "decisions": [{"type": "approve"}, {"type": "approve"}],
        "reviewer": {"id": "rev-1", "role": "controller"},
    },
]

PAYLOADS = st.one_of(
    JSON_VALUES,
    st.sampled_from(VALID_PAYLOADS).flatmap(mutations_of),
    st.builds(
        lambda ident, role: {"decisions": [{"type": "approve"}], "reviewer": ident | role},
        st.fixed_dictionaries({"id": nasty_text(max_size=20)}),
        st.fixed_dictionaries({}, optional={"role": st.sampled_from(["clerk", "controller"])}),
    ),
    st.builds(
        lambda message: {
            "decisions": [{"type": "reject", "message": message}],
            "reviewer": {"id": "rev-9"},
        },
        nasty_text(max_size=30),
    ),
)


def assert_usable(resume: ResumeIn, request: ApprovalRequest) -> None:
    """What an accepted resume guarantees to the approval node and the database."""
    actions = request["action_requests"]
    assert len(resume.decisions) == len(actions)
    reviewer = resume.reviewer.id
    assert reviewer != request["requester"]
    assert reviewer and all(c.isprintable() and not c.isspace() for c in reviewer), reviewer
    for decision, action, step in zip(resume.decisions, actions, request["steps"], strict=True):
        if decision.type == "edit":
            assert decision.edited_action is not None
            assert decision.edited_action.name == action["name"]
        if decision.type == "reject":
            assert decision.message and decision.message.strip()
        if decision.type != "reject":
            assert reviewer not in {a["id"] for a in step["approved_by"]}
        message = decision.message or ""
        assert "\x00" not in message
        message.encode("utf-8")  # no lone surrogates: Postgres must be able to store it


def assert_clear(error: BadInput) -> None:
    message = str(error)
    assert len(message) > 15
    assert all(c.isprintable() for c in message), message


@given(PAYLOADS, REQUESTS)
@example(
    {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev\x00"}},
    approval_request(["schedule_payment"]),
)
@example(
    {"decisions": [{"type": "approve"}], "reviewer": {"id": "\u202erev"}},
    approval_request(["schedule_payment"]),
)
def test_parse_resume_returns_a_usable_decision_or_a_clear_resume_error(
    value: Any, request: ApprovalRequest
) -> None:
    try:
        resume = parse_resume(value, request)
    except ResumeError as exc:
        assert_clear(exc)
    else:
        assert_usable(resume, request)


@example({"type": "reject", "message": "a\udcffb"})
@example({"type": "reject", "message": "line one\nline two\ttabbed"})
@example({"type": "approve", "message": "\x00"})
@given(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["approve", "reject"])},
        optional={"message": nasty_text(max_size=40)},
    )
)
def test_decision_messages_postgres_cannot_store_are_refused(decision: dict[str, Any]) -> None:
    value = {"decisions": [decision], "reviewer": {"id": "rev-1"}}
    try:
        resume = parse_resume(value, approval_request(["schedule_payment"]))
    except ResumeError as exc:
        assert_clear(exc)
    else:
        assert_usable(resume, approval_request(["schedule_payment"]))


# --- through Agent.resume on a real interrupted thread ----------------------------------------


async def _interrupted_thread(agent: Agent) -> str:
    view = await agent.start("Validate INV-1001 and pay it if it matches", user=REQUESTER)
    assert view["status"] == "interrupted", view
    return str(view["thread_id"])


def test_agent_resume_refuses_bad_payloads_without_writing_and_accepts_good_ones(
    db_uri: str,
) -> None:
    current: dict[str, str] = {}
    accepted: list[Any] = []

    @settings(max_examples=db_examples(25))
    @given(
        PAYLOADS,
        st.one_of(st.none(), st.just("real"), nasty_text(max_size=12)),
    )
    @example({"decisions": [{"type": "approve"}], "reviewer": {"id": "rev\x00"}}, None)
    @example(
        {"decisions": [{"type": "reject", "message": "no\x00"}], "reviewer": {"id": "r"}}, None
    )
    @example(
        {
            "decisions": [
                {
                    "type": "edit",
                    "edited_action": {
                        "name": "schedule_payment",
                        "args": {**EDIT_ARGS, "amount": "1e400"},
                    },
                }
            ],
            "reviewer": {"id": "rev-1"},
        },
        None,
    )
    @example(VALID_PAYLOADS[0], "real")
    def resume_one(value: Any, interrupt: str | None) -> None:
        async def go() -> None:
            async with open_agent(database=Database(db_uri, max_size=2)) as agent:
                if "thread" not in current:
                    current["thread"] = await _interrupted_thread(agent)
                thread = current["thread"]
                before = await agent.pending(thread)
                assert before
                interrupt_id = before[0][0] if interrupt == "real" else interrupt
                checkpoints = rows(
                    db_uri, "SELECT count(*) FROM checkpoints WHERE thread_id = %s", thread
                )
                try:
                    view = await agent.resume(thread, value, interrupt_id=interrupt_id)
                except ResumeError as exc:
                    assert_clear(exc)
                    after = await agent.pending(thread)
                    assert [i for i, _ in after] == [i for i, _ in before]
                    assert (
                        rows(
                            db_uri, "SELECT 1 FROM approval_decisions WHERE thread_id = %s", thread
                        )
                        == []
                    )
                    assert (
                        rows(
                            db_uri, "SELECT count(*) FROM checkpoints WHERE thread_id = %s", thread
                        )
                        == checkpoints
                    )
                    return
                accepted.append(value)
                assert view["status"] in VALID_STATUSES, view
                decided = rows(
                    db_uri,
                    "SELECT reviewer_id, decision FROM approval_decisions WHERE thread_id = %s",
                    thread,
                )
                assert [(value["reviewer"]["id"], d["type"]) for d in value["decisions"]] == [
                    tuple(row) for row in decided
                ]
                assert_no_partial_writes(db_uri)
                # Start over from the sample world: the thread is spent and INV-1001 may be paid.
                async with agent.database.connection() as conn:
                    await load_world(conn, read_world(SAMPLE_WORLD_PATH))
                del current["thread"]

        asyncio.run(go())

    resume_one()
    assert accepted, "no generated payload was valid; the accepted branch went untested"


async def _resume_unknown(uri: str, thread: str) -> BadInput | None:
    async with open_agent(database=Database(uri, max_size=2)) as agent:
        try:
            await agent.resume(thread, VALID_PAYLOADS[0])
        except BadInput as exc:
            return exc
    return None


def test_unknown_thread_ids_are_not_found(db_uri: str) -> None:
    @settings(max_examples=db_examples(10))
    @given(
        st.one_of(
            nasty_text(max_size=40).filter(lambda t: t.isprintable()),
            st.just(str(uuid.uuid4())),
        )
    )
    def resume_unknown(thread: str) -> None:
        error = asyncio.run(_resume_unknown(db_uri, thread))
        assert error is not None, f"resumed a thread that does not exist: {thread!r}"
        assert_clear(error)

    resume_unknown()


def test_ids_with_control_or_non_utf8_characters_are_refused_clearly(db_uri: str) -> None:
    cases: list[tuple[str, str | None]] = [
        ("\ud800", None),
        ("\udcff-thread", None),
        ("a\x00b", None),
        ("\x1f", None),
        ("\x1b[2J", None),
        ("real", "\x1b[2J"),
        ("real", "\u202edi"),
    ]

    async def go() -> list[str]:
        wrong = []
        async with open_agent(database=Database(db_uri, max_size=2)) as agent:
            real = await _interrupted_thread(agent)
            for thread, interrupt in cases:
                target = real if thread == "real" else thread
                try:
                    await agent.resume(target, VALID_PAYLOADS[0], interrupt_id=interrupt)
                except BadInput as exc:
                    if not all(c.isprintable() for c in str(exc)):
                        wrong.append(f"{thread!r}/{interrupt!r}: unprintable {str(exc)!r}")
                except Exception as exc:
                    wrong.append(f"{thread!r}/{interrupt!r}: {type(exc).__name__}: {exc}")
                else:
                    wrong.append(f"{thread!r}/{interrupt!r}: accepted")
        return wrong

    assert asyncio.run(go()) == []
