"""Hypothesis profiles for the property suite, and a CLI runner bound to the test database.

Profiles (choose with ``HYPOTHESIS_PROFILE``; default ``ci``):

- ``ci``: few examples and no deadline. The machine is slow and shared, and a test that
  fails on timing alone is a flake, not a finding.
- ``dev``: many more examples, for a local hunt (``HYPOTHESIS_PROFILE=dev pytest
  tests/property``).

Tests that touch Postgres cap their own example counts below the profile's (each example
runs the real graph or the real gate), via `tests.property.checks.db_examples`.

Failing examples are saved under ``.data/hypothesis`` (git-ignored), so a rerun replays
them first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from runtime.settings import PROJECT_ROOT

_EXAMPLES = DirectoryBasedExampleDatabase(PROJECT_ROOT / ".data" / "hypothesis")

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    database=_EXAMPLES,
    print_blob=True,
    # Generated worlds and payloads are large on purpose; generation is not what we test.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=1000,
    deadline=None,
    database=_EXAMPLES,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def cli_database(db_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point the in-process CLI at this test's database.

    The CLI caches its `Database` process-wide (`state.db._default_database`); reset it so
    neither an earlier test's database nor the embedded one is used.
    """
    monkeypatch.setenv("DATABASE_URI", db_uri)
    monkeypatch.delenv("PAYABLES_DATABASE_URI", raising=False)
    monkeypatch.setattr("state.db._default_database", None)
    yield db_uri
