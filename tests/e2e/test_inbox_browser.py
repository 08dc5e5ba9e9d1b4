"""The reviewer inbox in a real headless Chromium against a real `langgraph dev` server.

The server runs with the repo's `langgraph.json` (auth and the inbox app included), the
test's private Postgres database and a development token table. Runs are started through
the API with a clerk's token; people act only through the page. The screenshot of the
inbox is saved to ``reports/e2e/inbox.png`` (CI keeps ``reports/`` as an artifact).

Without Debian's `chromium` these tests fail under CI (``CI=true``) and skip elsewhere
(the ``browser`` fixture, tests/e2e/conftest.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langgraph_sdk import get_client
from playwright.async_api import Browser, Page, expect

from loadtest.devserver import dev_server
from runtime.settings import PROJECT_ROOT
from tests.cli import explain, payables

pytestmark = pytest.mark.e2e

GRAPH_ID = "payables"
REQUEST = "Validate INV-1001 and pay it if it matches"
INVOICE_ACCOUNT = "DE89370400440532013000"  # INV-1001's remit account in the sample world
TOKENS = {
    "tok-clerk-ana": {"identity": "clerk-ana", "role": "clerk", "tenant": "default"},
    "tok-rev-1": {"identity": "rev-1", "role": "reviewer", "tenant": "default"},
}
CLERK, REVIEWER = "tok-clerk-ana", "tok-rev-1"
SCREENSHOT = PROJECT_ROOT / "reports" / "e2e" / "inbox.png"
UI_TIMEOUT_MS = 60_000  # generous: two cores shared with the server and other tests
_LOCAL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def server(cli_env: dict[str, str], db_uri: str, tmp_path: Path) -> Iterator[str]:
    """`langgraph dev` with auth, the inbox and the dev token table; yields its URL."""
    env = {**cli_env, "PAYABLES_AUTH_TOKENS": json.dumps(TOKENS)}
    env.pop("PAYABLES_AUTH_TOKENS_FILE", None)
    env.pop("PAYABLES_JWT_SECRET", None)
    with dev_server(db_uri, env, tmp_path / "server") as url:
        yield url


@pytest.fixture
async def page(browser: Browser, server: str) -> AsyncIterator[Page]:
    """A fresh page; fails the test if it requests anything but the server."""
    context = await browser.new_context(viewport={"width": 1280, "height": 1600})
    opened = await context.new_page()
    elsewhere: list[str] = []
    opened.on(
        "request",
        lambda request: None if request.url.startswith(server) else elsewhere.append(request.url),
    )
    yield opened
    await context.close()
    assert not elsewhere, f"the inbox requested something outside the server: {elsewhere}"


async def _start_paused_run(url: str, request: str = REQUEST) -> tuple[str, dict[str, Any]]:
    """A clerk starts a payment request through the API; it stops at the approval."""
    async with get_client(url=url, api_key=None, headers=_bearer(CLERK), timeout=120) as client:
        thread = await client.threads.create()
        result = await client.runs.wait(
            thread["thread_id"], GRAPH_ID, input={"request": request, "user": "clerk-ana"}
        )
        assert isinstance(result, dict) and result.get("__interrupt__"), result
        state = await client.threads.get_state(thread["thread_id"])
    [interrupt] = state["interrupts"]
    return thread["thread_id"], interrupt


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _thread_outcome(db_uri: str, thread_id: str) -> tuple[str, int]:
    """(run status in the agent's run index, payments for INV-1001) in the test database."""
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute("SELECT status FROM runs WHERE thread_id = %s", (thread_id,))
        run = await cur.fetchone()
        cur = await conn.execute("SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'")
        payments = await cur.fetchone()
    assert run is not None and payments is not None
    return run[0], payments[0]


async def _sign_in(page: Page, url: str, token: str) -> None:
    await page.goto(f"{url}/inbox?refresh=2")
    await page.fill("#token", token)
    await page.click("#sign-in-button")


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=_bearer(token) if token else {})
    try:
        with _LOCAL_OPENER.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_page_is_public_and_data_needs_a_token(server: str) -> None:
    status, headers, body = _get(f"{server}/inbox")
    assert status == 200 and b"reviewer inbox" in body
    assert "default-src 'none'" in headers["content-security-policy"]
    assert b"http://" not in body and b"https://" not in body  # no external asset
    for asset in ("app.js", "app.css"):
        status, _, body = _get(f"{server}/inbox/{asset}")
        assert status == 200 and b"https://" not in body and b"http://" not in body
    assert _get(f"{server}/inbox/api/me")[0] == 401
    assert _get(f"{server}/inbox/api/me", "not-a-token")[0] == 401
    status, _, body = _get(f"{server}/inbox/api/me", REVIEWER)
    assert status == 200
    assert json.loads(body) == {"identity": "rev-1", "role": "reviewer", "tenant": "default"}


async def test_the_inbox_lists_what_the_run_index_says_waits(
    server: str, cli_env: dict[str, str]
) -> None:
    """The page listed the threads the server calls interrupted. A thread answered with
    `payables resume` stays interrupted there (the server never saw that run), so its card
    stayed, and answering it could only be refused."""
    thread_id, _ = await _start_paused_run(server)
    assert _get(f"{server}/inbox/api/pending")[0] == 401
    status, _, body = _get(f"{server}/inbox/api/pending", REVIEWER)
    assert status == 200 and json.loads(body) == {"threads": [thread_id]}
    answered = payables(cli_env, "resume", thread_id, "--approve", "--reviewer", "rev-1")
    assert answered.returncode == 0, explain(answered)
    async with get_client(url=server, api_key=None, headers=_bearer(REVIEWER)) as client:
        assert (await client.threads.get(thread_id))["status"] == "interrupted"
    status, _, body = _get(f"{server}/inbox/api/pending", REVIEWER)
    assert status == 200 and json.loads(body) == {"threads": []}


async def test_reviewer_approves_paused_run_and_thread_completes(
    page: Page, server: str, db_uri: str
) -> None:
    await _sign_in(page, server, REVIEWER)
    await expect(page.locator("#identity")).to_have_text("rev-1", timeout=UI_TIMEOUT_MS)
    await expect(page.locator("#empty")).to_be_visible(timeout=UI_TIMEOUT_MS)

    # Started after sign-in: the card appears by the page's own refresh, nobody clicks.
    thread_id, interrupt = await _start_paused_run(server)
    card = page.locator(f'article.approval[data-thread="{thread_id}"]')
    await expect(card).to_be_visible(timeout=UI_TIMEOUT_MS)
    await expect(card).to_have_attribute("data-interrupt", interrupt["id"])

    amount = interrupt["value"]["action_requests"][0]["args"]["amount"]
    await expect(card.locator(".amount")).to_contain_text(f"{amount} USD")
    await expect(card).to_contain_text("Invoice vs PO vs receipt")
    await expect(card).to_contain_text("Agent's reasoning")
    await expect(card.locator(".verdict")).to_have_text("match")
    await expect(card).to_contain_text("****" + INVOICE_ACCOUNT[-4:])
    assert INVOICE_ACCOUNT not in await page.content()
    assert await card.locator("table").count() >= 3  # args, invoice, match table

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000

    await card.locator("button.send").click()
    await expect(page.locator("#notice")).to_contain_text("completed", timeout=UI_TIMEOUT_MS)
    await expect(card).to_have_count(0, timeout=UI_TIMEOUT_MS)
    await expect(page.locator("#error")).to_be_hidden()

    assert await _thread_outcome(db_uri, thread_id) == ("completed", 1)
    async with get_client(url=server, api_key=None, headers=_bearer(REVIEWER)) as client:
        state = await client.threads.get_state(thread_id)
    assert state["next"] == [] and state["interrupts"] == []
    values = state["values"]
    assert isinstance(values, dict) and values["status"] == "completed"
    assert "payment_scheduled" in values["result"]["invoices"]["INV-1001"]["actions"]
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute(
            "SELECT reviewer_id FROM approval_decisions WHERE thread_id = %s", (thread_id,)
        )
        assert [row[0] for row in await cur.fetchall()] == ["rev-1"]


async def test_bad_token_then_clerk_cannot_approve(page: Page, server: str, db_uri: str) -> None:
    thread_id, _ = await _start_paused_run(server)
    await _sign_in(page, server, "not-a-token")
    await expect(page.locator("#error")).to_contain_text("HTTP 401", timeout=UI_TIMEOUT_MS)
    await expect(page.locator("#sign-in")).to_be_visible()
    await expect(page.locator("#inbox")).to_be_hidden()

    await page.fill("#token", CLERK)
    await page.click("#sign-in-button")
    card = page.locator(f'article.approval[data-thread="{thread_id}"]')
    await expect(card).to_be_visible(timeout=UI_TIMEOUT_MS)  # a clerk sees their own thread

    await card.locator("button.send").click()
    await expect(page.locator("#error")).to_contain_text("HTTP 403", timeout=UI_TIMEOUT_MS)
    await expect(page.locator("#error")).to_contain_text("clerk cannot")
    await expect(card).to_be_visible()

    assert await _thread_outcome(db_uri, thread_id) == ("interrupted", 0)


async def test_reviewer_edits_the_amount_and_rejects_with_a_reason(
    page: Page, server: str, db_uri: str
) -> None:
    edited_thread, _ = await _start_paused_run(server)
    # INV-1014's notes try to instruct the agent: the reviewer sees the guard's flag.
    rejected_thread, _ = await _start_paused_run(
        server, "Validate INV-1014 and pay it if it matches"
    )
    await _sign_in(page, server, REVIEWER)
    rejected = page.locator(f'article.approval[data-thread="{rejected_thread}"]')
    edited = page.locator(f'article.approval[data-thread="{edited_thread}"]')
    await expect(rejected).to_be_visible(timeout=UI_TIMEOUT_MS)
    await expect(edited).to_be_visible(timeout=UI_TIMEOUT_MS)

    await expect(rejected.locator("h3.guard-flags")).to_be_visible()
    await expect(rejected).to_contain_text("override_instructions")
    await expect(rejected).to_contain_text("INV-1014 notes")
    await expect(rejected).to_contain_text("****5555")  # the account it asks for, masked
    content = await page.content()
    for account in ("GB33BUKB20201555555555", "GB88BARC20041558103377", INVOICE_ACCOUNT):
        assert account not in content
    await rejected.locator("input[type=radio][value=reject]").check()
    await rejected.locator("button.send").click()
    await expect(page.locator("#error")).to_contain_text("Give a reason to reject")
    await rejected.locator("textarea.reason").fill("Notes try to redirect the payment")
    await rejected.locator("button.send").click()
    await expect(rejected).to_have_count(0, timeout=UI_TIMEOUT_MS)
    await expect(page.locator("#error")).to_be_hidden()

    await edited.locator("input[type=radio][value=edit]").check()
    await expect(edited.locator('[data-arg="invoice_id"]')).to_have_count(0)  # not editable
    await edited.locator('[data-arg="amount"]').fill("3000.00")
    await edited.locator("button.send").click()
    await expect(page.locator("#notice")).to_contain_text("completed", timeout=UI_TIMEOUT_MS)
    await expect(edited).to_have_count(0, timeout=UI_TIMEOUT_MS)

    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute(
            "SELECT thread_id, decision, reason, edited_args->>'amount', reviewer_id"
            " FROM approval_decisions ORDER BY decision_id"
        )
        decisions = await cur.fetchall()
        cur = await conn.execute("SELECT invoice_id, amount::text, thread_id FROM payments")
        payments = await cur.fetchall()
    assert decisions == [
        (rejected_thread, "reject", "Notes try to redirect the payment", None, "rev-1"),
        (edited_thread, "edit", "", "3000.00", "rev-1"),
    ]
    assert [p for p in payments if p[2] in (edited_thread, rejected_thread)] == [
        ("INV-1001", "3000.00", edited_thread)
    ]
