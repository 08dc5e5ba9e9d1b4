"""The reviewer inbox page in headless Chromium against a scripted API (no LangGraph server).

Every request the page makes is answered in the browser by Playwright (`page.route`): the
page's own files from ``server/static`` with the headers `server/inbox.py` sends, and the
LangGraph API calls by a small fake holding threads and interrupts. Nothing is sent to
any network, not even loopback. These tests pin what the page does with answers a real
server gives in rare situations (a decision that arrives after the approval changed, more
approvals than one page of search results, odd query strings), which are slow or racy to
produce with `langgraph dev` (`tests/e2e/test_inbox_browser.py` covers the real server).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Request, Route, expect

from runtime.settings import PROJECT_ROOT

pytestmark = pytest.mark.e2e

ORIGIN = "http://inbox.invalid"  # never resolved: every request is answered by the route
ME = {"identity": "ctl-1", "role": "controller", "tenant": "default"}
TIMEOUT_MS = 20_000


def _inbox_module() -> ModuleType:
    path = PROJECT_ROOT / "server" / "inbox.py"
    spec = importlib.util.spec_from_file_location("inbox_scripted_page", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def interrupt(
    interrupt_id: str, thread_no: int, approved_by: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """A pending payment approval as the approval node sends it (dual control)."""
    return {
        "id": interrupt_id,
        "value": {
            "action_requests": [
                {
                    "name": "schedule_payment",
                    "args": {"invoice_id": f"INV-{thread_no}", "amount": "136974.00"},
                    "description": "Pay it.",
                }
            ],
            "review_configs": [
                {"action_name": "schedule_payment", "allowed_decisions": ["approve"]}
            ],
            "evidence": [{}],
            "steps": [
                {
                    "step_id": "s3",
                    "tool": "schedule_payment",
                    "tier": "irreversible",
                    "min_approvers": 2,
                    "required_role": "controller",
                    "reasons": ["over the dual-control threshold"],
                    "approved_by": approved_by or [],
                }
            ],
            "requester": "clerk-ben",
            "request": f"Pay INV-{thread_no}",
            "error": None,
        },
    }


@dataclass
class FakeApi:
    """The LangGraph API calls the page makes, answered from memory."""

    threads: list[dict[str, Any]] = field(default_factory=list)
    # What POST /threads/{id}/runs/wait answers, by thread id.
    run_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    listings: int = 0
    """How many times the page asked for the pending threads."""
    resumes: list[dict[str, Any]] = field(default_factory=list)

    def add_thread(self, thread_no: int, pending: dict[str, Any]) -> str:
        thread_id = f"thread-{thread_no:04d}"
        self.threads.append(
            {
                "thread_id": thread_id,
                "metadata": {"graph_id": "payables"},
                "status": "interrupted",
                "interrupts": {"task-1": [pending]},
            }
        )
        return thread_id

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if path == "/inbox/api/me":
            return 200, ME
        if path == "/inbox/api/pending" and method == "GET":
            self.listings += 1
            return 200, {"threads": [t["thread_id"] for t in self.threads]}
        if path.startswith("/threads/") and path.endswith("/state") and method == "GET":
            found = [t for t in self.threads if t["thread_id"] == path.split("/")[2]]
            if not found:
                return 404, {"detail": "Thread not found"}
            pending = found[0]["interrupts"].values()
            return 200, {"interrupts": [each for task in pending for each in task]}
        if path.endswith("/runs/wait") and method == "POST":
            self.resumes.append(body)
            return 200, self.run_results[path.split("/")[2]]
        return 404, {"detail": f"not scripted: {method} {path}"}


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
async def page(browser: Browser, api: FakeApi) -> AsyncIterator[Page]:
    """A page whose every request is answered by the inbox's files or by ``api``."""
    inbox = _inbox_module()
    static = inbox.StaticInbox(inbox.app).files
    context = await browser.new_context()
    errors: list[str] = []

    async def handle(route: Route, request: Request) -> None:
        path = request.url.removeprefix(ORIGIN).split("?")[0]
        if request.method == "GET" and path in static:
            body, media_type = static[path]
            await route.fulfill(
                status=200, body=body, content_type=media_type, headers=inbox.SECURITY_HEADERS
            )
            return
        body = json.loads(request.post_data) if request.post_data else None
        status, answer = api.answer(request.method, path, body)
        await route.fulfill(status=status, body=json.dumps(answer), content_type="application/json")

    await context.route("**/*", handle)
    opened = await context.new_page()
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    await context.close()
    assert not errors, f"the page raised: {errors}"


async def sign_in(page: Page, query: str = "") -> None:
    await page.goto(f"{ORIGIN}/inbox{query}")
    await page.fill("#token", "tok-ctl-1")
    await page.click("#sign-in-button")
    await expect(page.locator("#identity")).to_have_text("ctl-1", timeout=TIMEOUT_MS)


async def test_a_decision_the_agent_did_not_record_is_not_reported_as_recorded(
    page: Page, api: FakeApi
) -> None:
    """Another reviewer answered first: the run moved to a new interrupt and LangGraph
    drops a resume for the old interrupt id without a word, answering with the pending
    interrupt, which does not carry this reviewer's signature."""
    stale = interrupt("a" * 32, 20)
    thread_id = api.add_thread(20, stale)
    await sign_in(page)
    card = page.locator(f'article.approval[data-thread="{thread_id}"]')
    await expect(card).to_be_visible(timeout=TIMEOUT_MS)

    current = interrupt("b" * 32, 20, [{"id": "rev-1", "role": "approver"}])
    api.threads[0]["interrupts"] = {"task-2": [current]}
    api.run_results[thread_id] = {"status": "interrupted", "__interrupt__": [current]}
    await card.locator("button.send").click()
    await expect(page.locator("#error")).to_contain_text("not recorded", timeout=TIMEOUT_MS)
    await expect(page.locator("#error")).to_contain_text(thread_id)
    await expect(page.locator("#notice")).to_be_hidden()
    assert list(api.resumes[0]["command"]["resume"]) == ["a" * 32]
    # The card now shows the approval as it is, for a decision on it.
    await expect(card).to_have_attribute("data-interrupt", "b" * 32, timeout=TIMEOUT_MS)


async def test_a_recorded_first_signature_is_reported_as_recorded(page: Page, api: FakeApi) -> None:
    first = interrupt("c" * 32, 21)
    thread_id = api.add_thread(21, first)
    await sign_in(page)
    card = page.locator(f'article.approval[data-thread="{thread_id}"]')
    await expect(card).to_be_visible(timeout=TIMEOUT_MS)
    second = interrupt("d" * 32, 21, [{"id": "ctl-1", "role": "controller"}])
    api.threads[0]["interrupts"] = {"task-2": [second]}
    api.run_results[thread_id] = {"status": "interrupted", "__interrupt__": [second]}
    await card.locator("button.send").click()
    await expect(page.locator("#notice")).to_contain_text(
        "waits for another approval", timeout=TIMEOUT_MS
    )
    await expect(page.locator("#error")).to_be_hidden()


@pytest.mark.parametrize(
    ("decided_by", "banner", "text"),
    [
        # Two reviewers at once: the other's answer finished the run before this one ran.
        ("rev-2", "#error", "not recorded"),
        ("ctl-1", "#notice", "Decision recorded"),
    ],
)
async def test_a_run_that_finished_says_whose_decision_finished_it(
    page: Page, api: FakeApi, decided_by: str, banner: str, text: str
) -> None:
    pending = interrupt("e" * 32, 22)
    thread_id = api.add_thread(22, pending)
    await sign_in(page)
    card = page.locator(f'article.approval[data-thread="{thread_id}"]')
    await expect(card).to_be_visible(timeout=TIMEOUT_MS)
    api.threads[0]["interrupts"] = {}
    api.threads[0]["status"] = "idle"
    # As the server answers a resumed run: the channels it wrote, the decisions in `result`.
    api.run_results[thread_id] = {
        "status": "completed",
        "result": {
            "decisions": [
                {
                    "step_id": "s3",
                    "tool": "schedule_payment",
                    "decision": "approve",
                    "reviewer_id": decided_by,
                    "reviewer_role": "controller",
                    "reason": "",
                    "args": {},
                }
            ]
        },
    }
    await card.locator("button.send").click()
    await expect(page.locator(banner)).to_contain_text(text, timeout=TIMEOUT_MS)
    await expect(page.locator(banner)).to_contain_text(thread_id)


async def test_every_pending_approval_is_listed(page: Page, api: FakeApi) -> None:
    """The README: the page lists every approval the token may see (the server's search
    answered a page of threads at a time; the run index's list has them all)."""
    for n in range(1, 131):
        api.add_thread(n, interrupt(f"{n:032x}", n))
    await sign_in(page)
    await expect(page.locator("#count")).to_have_text("130", timeout=TIMEOUT_MS)
    await expect(page.locator("article.approval")).to_have_count(130)
    await expect(page.locator('article.approval[data-thread="thread-0130"]')).to_be_visible()


@pytest.mark.parametrize("refresh", ["1e9", "Infinity", "3000000"])
async def test_a_huge_refresh_period_does_not_refresh_in_a_loop(
    page: Page, api: FakeApi, refresh: str
) -> None:
    """Timers take at most 2^31-1 ms; a longer (or infinite) period fired at once, over and
    over, and the page flooded the server with requests."""
    await sign_in(page, f"?refresh={refresh}")
    await expect(page.locator("#empty")).to_be_visible(timeout=TIMEOUT_MS)
    await page.wait_for_timeout(1500)
    assert api.listings == 1, f"{api.listings} listings in 1.5 s"
    interval = int(await page.locator("#interval").inner_text())
    assert 2 <= interval <= 3600


async def test_only_the_decisions_the_approval_allows_are_offered(page: Page, api: FakeApi) -> None:
    """A bank change is approved or rejected as asked: its account is shown masked, so an
    edit could only send the mask back. The page offers what ``review_configs`` allows."""
    change = interrupt("e" * 32, 22)
    change["value"]["action_requests"] = [
        {
            "name": "update_vendor_bank_account",
            "args": {"vendor_id": "V-006", "new_account": "****4811"},
            "description": "Change the account.",
        }
    ]
    change["value"]["review_configs"] = [
        {"action_name": "update_vendor_bank_account", "allowed_decisions": ["approve", "reject"]}
    ]
    thread_id = api.add_thread(22, change)
    await sign_in(page)
    card = page.locator(f'article.approval[data-thread="{thread_id}"]')
    await expect(card).to_be_visible(timeout=TIMEOUT_MS)
    offered = card.locator("fieldset.decision input[type=radio]")
    assert await offered.evaluate_all("radios => radios.map((r) => r.value)") == [
        "approve",
        "reject",
    ]
    await expect(card.locator("[data-arg]")).to_have_count(0)
