"""Failpoints: what `PAYABLES_FAILPOINTS` entries mean, and refusals of malformed ones."""

from __future__ import annotations

import psycopg
import pytest

from runtime import failpoints
from runtime.errors import ConfigError
from runtime.failpoints import Action, FailpointError, parse


def test_entries_parse_to_their_actions() -> None:
    assert parse(
        " after_commit:schedule_payment, sleep:after_commit:stage_invoice:2.5,"
        "raise:verifier,flaky:before:planner:2,"
    ) == {
        "after_commit:schedule_payment": Action("kill"),
        "after_commit:stage_invoice": Action("sleep", seconds=2.5),
        "verifier": Action("raise"),
        "before:planner": Action("flaky", times=2),
    }


@pytest.mark.parametrize("entry", ["sleep:verifier", "sleep::2", "sleep:x:-1", "flaky:x:often"])
def test_malformed_entries_are_refused_with_the_expected_shape(entry: str) -> None:
    with pytest.raises(ConfigError, match="must look like"):
        parse(entry)


def test_unlisted_points_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(failpoints.ENV_VAR, "raise:verifier")
    failpoints.hit("after_commit:schedule_payment")
    with pytest.raises(FailpointError, match="failpoint verifier raised"):
        failpoints.hit("verifier")


async def test_a_flaky_point_fails_the_first_times_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(failpoints.ENV_VAR, "flaky:test-flaky-point:2")
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError, match="server closed the connection"):
            await failpoints.ahit("test-flaky-point")
    await failpoints.ahit("test-flaky-point")


async def test_a_sleep_point_announces_itself(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(failpoints.ENV_VAR, "sleep:test-sleep-point:0")
    await failpoints.ahit("test-sleep-point")
    assert "failpoint test-sleep-point: sleeping 0s" in capsys.readouterr().err
