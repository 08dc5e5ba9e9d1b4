"""Within a leg of a run the budget guard reuses the tenant's spend, not a read per step."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

import runtime.budgets as budgets
from state.costs import TenantDay


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each database read of a tenant's spend, by tenant; the clock is the test's."""
    done: list[str] = []

    async def spent_today(database: Any, tenant: str) -> TenantDay:
        done.append(tenant)
        return TenantDay(tenant, date(2026, 11, 23), cost_usd=float(len(done)))

    monkeypatch.setattr(budgets, "spent_today", spent_today)
    return done


async def test_a_leg_reads_once_then_reuses_until_the_age_limit(
    reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(budgets, "monotonic", clock)
    seen = budgets._SpendSeen()
    first = await seen.read(None, "acme", "t-1")  # type: ignore[arg-type]
    clock.now += budgets.SPEND_MAX_AGE_S / 2
    assert await seen.read(None, "acme", "t-1") == first  # type: ignore[arg-type]
    assert reads == ["acme"]
    clock.now += budgets.SPEND_MAX_AGE_S  # older than the limit: other processes may have spent
    again = await seen.read(None, "acme", "t-1")  # type: ignore[arg-type]
    assert reads == ["acme", "acme"] and again.cost_usd == 2.0


async def test_the_legs_own_charge_counts_at_once(reads: list[str]) -> None:
    seen = budgets._SpendSeen()
    await seen.read(None, "acme", "t-1")  # type: ignore[arg-type]
    charged = TenantDay("acme", date(2026, 11, 23), cost_usd=7.5)
    seen.note("t-1", charged)
    assert await seen.read(None, "acme", "t-1") == charged  # type: ignore[arg-type]
    assert reads == ["acme"]


async def test_a_pause_forgets_so_a_resume_reads_afresh(reads: list[str]) -> None:
    seen = budgets._SpendSeen()
    await seen.read(None, "acme", "t-1")  # type: ignore[arg-type]
    seen.forget("t-1")  # the guard does this on an interrupt, a failure and after respond
    await seen.read(None, "acme", "t-1")  # type: ignore[arg-type]
    await seen.read(None, "globex", "t-2")  # type: ignore[arg-type]
    assert reads == ["acme", "acme", "globex"]
