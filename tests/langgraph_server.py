"""Start a real `langgraph dev` server for end-to-end tests, and stop all of it afterwards.

The server runs as a child process on a free loopback port, in its own working directory
(``workdir``), with the project's `langgraph.json` paths made absolute.

`langgraph dev` overwrites `DATABASE_URI` with ``:memory:`` inside its process, so the
server is pointed at a test database through `PAYABLES_DATABASE_URI` (see `runtime.settings`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

# One launcher: the same code starts the server for `make loadtest`.
from loadtest.devserver import API_KEY_VARIABLES, OFFLINE_ENV, DevServerError, launch


def server_env(base: Mapping[str, str], db_uri: str, **extra: str) -> dict[str, str]:
    """``base`` pointed at ``db_uri``, with tracing, analytics and version checks off."""
    env = {
        **base,
        "DATABASE_URI": db_uri,
        "PAYABLES_DATABASE_URI": db_uri,
        **OFFLINE_ENV,  # LANGGRAPH_NO_VERSION_CHECK: else it asks pypi.org for a newer version
        **extra,
    }
    for key in API_KEY_VARIABLES:
        env.pop(key, None)
    return env


@contextmanager
def langgraph_dev(env: Mapping[str, str], workdir: Path) -> Iterator[str]:
    """Run `langgraph dev` with ``env`` in ``workdir`` on a free loopback port; yield its URL.

    The server's output goes to ``workdir/langgraph-dev.log``; a start-up failure fails
    the test with its tail, and so does a record the server's logging could not print
    (Python reports those as "--- Logging error ---" and goes on without the record).
    """
    serve_dir = workdir / "server"
    serve_dir.mkdir(parents=True)
    log_path = workdir / "langgraph-dev.log"
    with ExitStack() as stack:
        try:
            url = stack.enter_context(launch(env, serve_dir, log_path))
        except DevServerError as exc:
            pytest.fail(str(exc))
        yield url
    log = log_path.read_text(errors="replace")
    if "--- Logging error ---" in log:
        start = log.index("--- Logging error ---")
        pytest.fail(f"the server lost log records; first failure:\n{log[start : start + 3000]}")
