"""What the CLI prints for people: help that reads as paragraphs, cells cut with care."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console
from typer.testing import CliRunner

from runtime.agent import checked_id
from runtime.cli import app, clip, threads_listing
from runtime.errors import BadInput


def test_short_text_is_left_as_written() -> None:
    assert clip("Validate INV-1002", 48) == "Validate INV-1002"
    assert clip("x" * 48, 48) == "x" * 48


def test_a_cut_ends_at_a_word_and_says_so() -> None:
    request = "Change the bank account of vendor V-006 to ****4811, per their letter"
    clipped = clip(request, 48)
    assert clipped == "Change the bank account of vendor V-006 to…"
    assert len(clipped) <= 48


def test_a_masked_account_is_never_cut_into_another_one() -> None:
    for limit in range(20, 40):
        clipped = clip("paid to ****4811 on 2026-02-27 per the remittance", limit)
        assert "****4811" in clipped or "****" not in clipped, (limit, clipped)
        assert clipped.endswith("…") and len(clipped) <= limit


def test_one_long_word_is_cut_inside_it_rather_than_dropped() -> None:
    assert clip("a" * 100, 10) == "a" * 9 + "…"


def test_help_joins_a_docstring_into_paragraphs_that_fit_the_terminal() -> None:
    shown = CliRunner().invoke(app, ["prune", "--help"], env={"COLUMNS": "100"})
    assert shown.exit_code == 0, shown.output
    # The docstring breaks its lines after "one" and "The run list,"; help must not.
    assert "a thread waiting for an approval, one that can still" in shown.output
    assert all(len(line) <= 100 for line in shown.output.splitlines())


def test_a_bad_id_is_quoted_once_and_says_where_good_ids_are_listed() -> None:
    with pytest.raises(BadInput) as thread:
        checked_id("bad\x1bthread", "thread id")
    assert str(thread.value).startswith(r"'bad\x1bthread' is not a valid thread id")
    assert "`payables threads` lists thread ids" in str(thread.value)
    with pytest.raises(BadInput) as interrupt:
        checked_id("x\ty", "interrupt id")
    assert str(interrupt.value).startswith(r"'x\ty' is not a valid interrupt id")
    assert "`payables approvals` lists interrupt ids" in str(interrupt.value)


THREAD_ROWS = [
    {
        "thread_id": "5d175826-6351-4cd7-a830-a52a6c6231c7",
        "status": "completed",
        "route": "policy_question",
        "requester": "clerk-ben",
        "request": "What is our price variance tolerance for invoice matching?",
        "updated_at": datetime(2026, 12, 7, 12, 20, tzinfo=UTC),
    },
    {
        "thread_id": "t-[bold]odd",
        "status": "interrupted",
        "route": None,
        "requester": "clerk-ana",
        "request": "Change the bank account of vendor V-006 to ****4811, per their letter",
        "updated_at": datetime(2026, 12, 7, 12, 21, tzinfo=UTC),
    },
]


def rendered(width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width)
    console.print(threads_listing(THREAD_ROWS, width))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return [line.rstrip() for line in text.splitlines()]


@pytest.mark.parametrize("width", [80, 60])
def test_threads_on_a_narrow_terminal_are_two_lines_each_with_whole_ids(width: int) -> None:
    # A six-column table squeezed into 80 columns wrapped cells to four letters a line.
    lines = rendered(width)
    when = "2026-12-07 12:20"
    first, second = (f"  {when}", "") if width == 80 else ("", f"{when} · ")
    assert lines[1] == f"{THREAD_ROWS[0]['thread_id']}  completed  {first}".rstrip()
    assert lines[2].startswith(f"  {second}policy_question · clerk-ben · What is")
    assert lines[3].split()[:2] == ["t-[bold]odd", "interrupted"]  # not read as markup
    assert "not yet routed · clerk-ana · Change" in lines[4]
    assert "****4811" in lines[4] or "****" not in lines[4]
    assert len(lines) == 5
    assert all(len(line) <= width for line in lines), lines


def test_threads_on_a_wide_terminal_are_a_table() -> None:
    lines = rendered(200)
    assert "route" in lines[1] and "requester" in lines[1]
    assert any("What is our price variance tolerance for invoice matching?" in ln for ln in lines)
    assert any("t-[bold]odd" in line for line in lines)
    assert all(len(line) <= 200 for line in lines)


def test_no_threads_is_an_empty_table_at_any_width() -> None:
    for width in (40, 80, 200):
        console = Console(file=io.StringIO(), width=width)
        console.print(threads_listing([], width))
        assert "thread" in console.file.getvalue()  # type: ignore[attr-defined]
