"""Log lines: plain for people, or one JSON object per line for machines.

`PAYABLES_LOG_FORMAT=json` makes every line a JSON object carrying the run's ``thread_id``
when it is logged from inside a run: the same id is the ``thread_id`` metadata of the run's
LangSmith trace and the ``thread_id`` of its audit rows, so one id joins all three.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from typing import Any

from guards.redaction import RedactingFilter, redact_text
from runtime.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")


def current_thread_id_or_none() -> str | None:
    """The thread id of the graph run this code is in, or None outside a run."""
    try:
        from langgraph.config import get_config

        thread_id = get_config().get("configurable", {}).get("thread_id")
    except RuntimeError:  # not inside a runnable context
        return None
    return str(thread_id) if thread_id else None


class ThreadIdFilter(logging.Filter):
    """Stamps each record with the run's thread id (``-`` outside a run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add ``thread_id`` to the record; never drops it."""
        record.thread_id = current_thread_id_or_none() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, thread_id, and exception.

    A library's traceback is the ``exception`` field; one logged by this project's modules
    is in its ``message`` already (`redact_process_logs`, installed wherever the graph is).
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one redacted JSON line."""
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
            "thread_id": getattr(record, "thread_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure_logging() -> None:
    """Set up the root logger from `PAYABLES_LOG_LEVEL` and `PAYABLES_LOG_FORMAT`.

    A value that names no level or format raises `ConfigError`: a typo in a level made
    logging raise its own ValueError (a traceback before any command ran), and one in the
    format quietly logged text to a collector expecting JSON.
    """
    level = _choice("PAYABLES_LOG_LEVEL", "WARNING", LOG_LEVELS, upper=True)
    log_format = _choice("PAYABLES_LOG_FORMAT", "text", LOG_FORMATS, upper=False)
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(levelname)s %(name)s [%(thread_id)s]: %(message)s")
        )
    handler.addFilter(ThreadIdFilter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


OWN_LOGGERS = ("graphs", "guards", "nodes", "runtime", "server", "state", "tools", "evals")
"""Top-level packages of this project: their records are masked wherever they go."""

_FACTORY_LOCK = threading.Lock()


def redact_process_logs() -> None:
    """Mask accounts and secrets in every record this project's modules log, in any handler.

    `configure_logging` masks at its own handler, which only the CLI installs. Under the
    LangGraph server the handlers are the server's, so the records are masked as they are
    made instead (a log-record factory), before any handler sees them. A record's traceback
    becomes part of its masked message (the record keeps no exception a formatter could
    print unmasked). Library records are left as they are. Called when the served graph is
    loaded; once per process.
    """
    with _FACTORY_LOCK:
        previous = logging.getLogRecordFactory()
        if getattr(previous, "masks_own_records", False):
            return

        def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            # `logging.makeLogRecord` (structlog's formatter, the server's, copies every
            # record with it) makes a blank record, name None, and fills it in afterwards:
            # a copy of a record this factory made, so masked already.
            if isinstance(record.name, str) and record.name.split(".", 1)[0] in OWN_LOGGERS:
                message = record.getMessage()
                if record.exc_info:
                    # The traceback goes into the message, masked, and the exception off the
                    # record: the server's formatter (structlog) renders a record's
                    # exception from the live exception, not from any text we could mask.
                    traceback = logging.Formatter().formatException(record.exc_info)
                    message = f"{message}\n{traceback}"
                    record.exc_info = None
                    record.exc_text = None
                record.msg = redact_text(message)
                record.args = ()
            return record

        masked_record.masks_own_records = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(masked_record)


def _choice(variable: str, default: str, choices: tuple[str, ...], *, upper: bool) -> str:
    """The environment's value of ``variable`` (any case), one of ``choices``."""
    raw = os.environ.get(variable) or default
    value = raw.upper() if upper else raw.lower()
    if value not in choices:
        listed = ", ".join(choices[:-1]) + f" or {choices[-1]}"
        raise ConfigError(f"{variable} must be one of {listed}, got {raw!r}; set one or unset it.")
    return value
