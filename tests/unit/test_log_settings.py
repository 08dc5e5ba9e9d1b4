"""`PAYABLES_LOG_LEVEL` and `PAYABLES_LOG_FORMAT`: a value that means nothing is refused by name."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from runtime.errors import ConfigError
from runtime.logs import OWN_LOGGERS, JsonFormatter, configure_logging
from runtime.settings import PROJECT_ROOT


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("PAYABLES_LOG_LEVEL", "verbose", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
        ("PAYABLES_LOG_LEVEL", "5", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
        ("PAYABLES_LOG_FORMAT", "xml", "text or json"),
    ],
)
def test_an_unknown_value_is_refused_naming_the_variable_and_the_choices(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"{variable} must be one of {named}, got '{value}'"):
        configure_logging()


def test_known_values_in_any_case_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYABLES_LOG_LEVEL", "debug")
    monkeypatch.setenv("PAYABLES_LOG_FORMAT", "JSON")
    configure_logging()
    root = logging.getLogger()
    assert root.level == logging.DEBUG
    assert isinstance(root.handlers[0].formatter, JsonFormatter)


def python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """This interpreter run on ``args`` in the project, in a process of its own."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_cli_says_so_and_exits_2_instead_of_a_traceback() -> None:
    env = {"PATH": "/usr/bin:/bin", "PAYABLES_LOG_LEVEL": "bogus", "LANGSMITH_TRACING": "false"}
    proc = python("-m", "runtime.cli", "--help", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "PAYABLES_LOG_LEVEL must be one of" in proc.stderr


SERVER_LOGGING = """
import logging, sys
import graphs.payables  # what the LangGraph server loads: it installs the masking

handler = logging.StreamHandler(sys.stdout)  # a handler like the server's: no filters of ours
if sys.argv[1] == "server":
    from langgraph_api.logging import Formatter  # the formatter `langgraph dev` logs with

    handler.setFormatter(Formatter(None, None, "%"))
logging.getLogger().handlers[:] = [handler]
log = logging.getLogger("tools.gate")
log.warning("paying %s", "GB29 NWBK 6016 1331 9268 19")
try:
    raise ValueError("refused GB29NWBK60161331926819")
except ValueError:
    log.exception("failed")
logging.getLogger("httpx").warning("library GB29NWBK60161331926819")
"""


@pytest.mark.parametrize("formatter", ["server", "plain"])
def test_the_served_graph_masks_what_the_agent_logs_through_the_servers_handlers(
    formatter: str,
) -> None:
    proc = python("-c", SERVER_LOGGING, formatter)
    assert proc.returncode == 0, proc.stderr
    # The server's formatter (structlog) copies each record with `logging.makeLogRecord`.
    assert "Logging error" not in proc.stderr, proc.stderr
    own, library = proc.stdout.split("library ")
    assert "paying ****6819" in own and "refused ****6819" in own, own
    # structlog prints a record's traceback from the live exception: none may be left.
    assert "9268" not in own and "Traceback" in own, own
    # Other libraries' records are theirs: left as they are.
    assert "GB29NWBK60161331926819" in library, library


def test_the_auth_handler_logs_as_this_project_when_the_server_loads_it_by_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server imports `server/auth.py` from its path, as a module named
    # "dynamic_module_<hash>": a logger named after the module would not be masked.
    spec = importlib.util.spec_from_file_location(
        "dynamic_module_123", PROJECT_ROOT / "server" / "auth.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert module.log.name.split(".", 1)[0] in OWN_LOGGERS
