"""LangSmith tracing that never ships an account number or a secret.

Tracing is on when `LANGSMITH_TRACING` is true. Every run the CLI (or a test) starts goes
through a client whose `hide_inputs` / `hide_outputs` apply the same redaction as the
output guard, because graph state holds what a clerk typed (a new bank account, say).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from langsmith import Client
from langsmith.run_helpers import tracing_context

from guards.redaction import redact


def tracing_enabled() -> bool:
    """Whether the environment asks for LangSmith tracing."""
    value = os.environ.get("LANGSMITH_TRACING") or os.environ.get("LANGCHAIN_TRACING_V2", "")
    return value.strip().lower() in {"1", "true", "yes"}


def _redact_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return redact(payload)


def redacting_client(**kwargs: Any) -> Client:
    """A LangSmith client that redacts run inputs and outputs before they are sent."""
    return Client(hide_inputs=_redact_payload, hide_outputs=_redact_payload, **kwargs)


@contextmanager
def traced(client: Client | None = None) -> Iterator[None]:
    """Trace through ``client`` (or a redacting default when tracing is enabled)."""
    if client is None and not tracing_enabled():
        yield
        return
    with tracing_context(enabled=True, client=client or redacting_client()):
        yield
