"""LangSmith tracing that never ships an account number or a secret.

Tracing is on when any of the variables langsmith reads says so (`TRACING_ENABLED_BY`).
Every run the CLI (or a test) starts goes
through a client whose anonymizer applies the same redaction as the
output guard, because graph state holds what a clerk typed (a new bank account, say). On
the LangGraph server, which traces through langsmith's process-wide client instead,
`redact_process_traces` makes that client a redacting one when the graph is loaded.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import langsmith
from langsmith import Client
from langsmith.run_helpers import get_current_run_tree, get_tracing_context, tracing_context
from pydantic import BaseModel

from guards.redaction import redact

log = logging.getLogger(__name__)


TRACING_ENABLED_BY = (
    "LANGSMITH_TRACING_V2",
    "LANGCHAIN_TRACING_V2",
    "LANGSMITH_TRACING",
    "LANGCHAIN_TRACING",
)
"""The variables langsmith reads to decide whether to trace (`langsmith.utils`)."""


def tracing_enabled() -> bool:
    """Whether the environment asks for LangSmith tracing: any of `TRACING_ENABLED_BY` does.

    Any one, not langsmith's order of precedence, so that wherever langsmith traces, the
    redacting client is in place: read as one variable first and another as a fallback,
    ``LANGSMITH_TRACING=false`` with ``LANGCHAIN_TRACING_V2=true`` had langsmith tracing
    and this saying no, and the process-wide client sent accounts as typed.
    """
    return any(
        os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}
        for name in TRACING_ENABLED_BY
    )


def plain(value: Any) -> Any:
    """``value`` as JSON-like data, so redaction sees every string inside it.

    Node outputs are `Command` objects, messages are pydantic models: left as objects,
    their strings would reach the SDK's serializer unredacted.
    """
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, BaseModel):
        return plain(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)


def _redact_payload(payload: dict[str, Any]) -> dict[str, Any]:
    redacted: dict[str, Any] = redact(plain(payload))
    return redacted


def redacting_client(**kwargs: Any) -> Client:
    """A LangSmith client that redacts every run payload before it is sent.

    The anonymizer sees inputs, outputs, metadata and error strings after the SDK has
    serialized them (an interrupt's error text quotes the whole approval request, say).
    """
    return Client(anonymizer=_redact_payload, **kwargs)


_PROCESS_CLIENT_LOCK = threading.Lock()
_process_client: Client | None = None


def redact_process_traces() -> Client | None:
    """Make langsmith's process-wide client a redacting one, if tracing is enabled.

    The LangGraph server traces each run with a tracer on that client
    (``langsmith.run_trees.get_cached_client``), not through `traced`; without this, node
    inputs and outputs (the request, the state) would leave as typed. Called when the
    served graph is loaded, before any run; once per process.
    """
    global _process_client
    if not tracing_enabled():
        return None
    with _PROCESS_CLIENT_LOCK:
        if _process_client is None:
            _process_client = redacting_client()
            langsmith.configure(client=_process_client)
    return _process_client


@contextmanager
def traced(client: Client | None = None) -> Iterator[None]:
    """Trace through ``client`` (or a redacting default when tracing is enabled)."""
    if client is None and not tracing_enabled():
        yield
        return
    # Keep the tags and metadata an outer context set (an eval suite's, say): a nested
    # tracing_context replaces them rather than adding to them.
    outer = get_tracing_context()
    with tracing_context(
        enabled=True,
        client=client or redacting_client(),
        tags=outer.get("tags"),
        metadata=outer.get("metadata"),
    ):
        yield


def annotate_run(**metadata: Any) -> None:
    """Add metadata (route, model path, ...) to the LangSmith run of the running node."""
    run = get_current_run_tree()
    if run is not None:
        run.add_metadata(redact(metadata))


@contextmanager
def child_run(
    name: str,
    *,
    run_type: Literal["tool", "chain"],
    inputs: Callable[[], dict[str, Any]],
    metadata: dict[str, Any],
    tags: list[str],
) -> Iterator[dict[str, Any] | None]:
    """A LangSmith run under the running node while the block runs; yields its outputs dict.

    Nothing happens outside a traced run: ``inputs`` is not even called, and the block gets
    None instead of a dict, so it spends nothing on outputs nobody sends (redacting them
    costs more than the rest of a tool call's bookkeeping). Tracing is best effort: a
    LangSmith endpoint that refuses or is down is logged and never fails the call being
    traced.
    """
    parent = get_current_run_tree()
    if parent is None:
        yield None
        return
    outputs: dict[str, Any] = {}
    child = None
    try:
        child = parent.create_child(
            name=name,
            run_type=run_type,
            inputs=inputs(),
            tags=tags,
            extra={"metadata": metadata},
        )
        child.post()
    except Exception as exc:  # tracing must not break the traced work
        log.warning("could not trace %s: %s", name, exc)
        child = None
    error: str | None = None
    try:
        yield outputs
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if child is not None:
            try:
                child.end(outputs=outputs, error=error)
                child.patch()
            except Exception as exc:  # tracing must not break the traced work
                log.warning("could not finish the trace of %s: %s", name, exc)
