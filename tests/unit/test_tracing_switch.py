"""Wherever langsmith would trace, the redacting client is in place (`runtime.tracing`)."""

from __future__ import annotations

import itertools

import langsmith.utils
import pytest

from runtime.tracing import TRACING_ENABLED_BY, tracing_enabled

SETTINGS = (None, "false", "true")


@pytest.mark.parametrize(
    "values", list(itertools.product(SETTINGS, repeat=len(TRACING_ENABLED_BY)))
)
def test_the_project_traces_whenever_langsmith_would(
    monkeypatch: pytest.MonkeyPatch, values: tuple[str | None, ...]
) -> None:
    """``LANGSMITH_TRACING=false`` with ``LANGCHAIN_TRACING_V2=true`` had langsmith tracing
    (it reads the V2 names first) and the project installing no redacting client."""
    for name, value in zip(TRACING_ENABLED_BY, values, strict=True):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    langsmith.utils.get_env_var.cache_clear()  # langsmith caches what it read
    try:
        langsmith_traces = langsmith.utils.tracing_is_enabled() is True
    finally:
        langsmith.utils.get_env_var.cache_clear()
    if langsmith_traces:
        assert tracing_enabled(), dict(zip(TRACING_ENABLED_BY, values, strict=True))
    assert tracing_enabled() == ("true" in values)
