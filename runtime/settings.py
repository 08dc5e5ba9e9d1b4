"""Process-wide settings read once from the environment.

Run-scoped knobs (models per role, thresholds, tenant) live in `runtime.context.Context`
instead; this module only holds what belongs to the process: where the database is and
where the embedded Postgres keeps its files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LANGGRAPH_DEV_PLACEHOLDER = ":memory:"
"""What `langgraph dev` sets `DATABASE_URI` to inside its own process."""
DEFAULT_RETENTION_DAYS = 30
MAX_RETENTION_DAYS = 36_500
"""A century: past that the cutoff date would leave the calendar (`datetime` ends at 9999)."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Process settings; build with `Settings.from_env()`."""

    database_uri: str | None
    """An explicit Postgres URI; None means use the embedded server.

    `PAYABLES_DATABASE_URI` wins, in every process: the CLI, `langgraph dev` and a
    deployed server must all reach the one Postgres it names. Without it, `DATABASE_URI`,
    except that `langgraph dev` sets that to ``:memory:`` in its own process (for its
    in-memory runtime) before importing the graph, which means the embedded server.
    """

    database_uri_from: str | None = None
    """The variable `database_uri` came from, for messages (None: embedded)."""

    data_dir: Path
    """Where the embedded Postgres keeps its cluster (`PAYABLES_DATA_DIR`, default `.data/`)."""

    pool_max_size: int
    """Upper bound on pooled connections per process (`PAYABLES_POOL_MAX_SIZE`, default 20:
    two per run at LangGraph's default of 10 runs at once per worker, since a run's step and
    its asynchronous checkpoint write each hold one)."""

    retention_days: int = DEFAULT_RETENTION_DAYS
    """Finished threads' checkpoints older than this many days may be pruned
    (`PAYABLES_RETENTION_DAYS`; `payables prune` uses it unless given `--older-than`)."""

    @classmethod
    def from_env(cls) -> Settings:
        """Read settings from the environment, failing loudly on malformed values."""
        raw_pool = os.environ.get("PAYABLES_POOL_MAX_SIZE", "20")
        try:
            pool_max_size = int(raw_pool)
        except ValueError as exc:
            raise ConfigError(
                f"PAYABLES_POOL_MAX_SIZE must be an integer, got {raw_pool!r}; "
                "set it to a number such as 10 or unset it."
            ) from exc
        if pool_max_size < 1:
            raise ConfigError(f"PAYABLES_POOL_MAX_SIZE must be at least 1, got {pool_max_size}.")
        raw_retention = os.environ.get("PAYABLES_RETENTION_DAYS") or str(DEFAULT_RETENTION_DAYS)
        try:
            retention_days = int(raw_retention)
        except ValueError as exc:
            raise ConfigError(
                f"PAYABLES_RETENTION_DAYS must be a whole number of days, got {raw_retention!r}; "
                "set it to a number such as 30 or unset it."
            ) from exc
        if not 1 <= retention_days <= MAX_RETENTION_DAYS:
            raise ConfigError(
                f"PAYABLES_RETENTION_DAYS must be between 1 and {MAX_RETENTION_DAYS}, got "
                f"{retention_days}."
            )
        data_dir = Path(os.environ.get("PAYABLES_DATA_DIR") or PROJECT_ROOT / ".data")
        uri_from: str | None = next(
            (
                name
                for name in ("PAYABLES_DATABASE_URI", "DATABASE_URI")
                if os.environ.get(name) not in (None, "", LANGGRAPH_DEV_PLACEHOLDER)
            ),
            None,
        )
        return cls(
            database_uri=os.environ[uri_from] if uri_from else None,
            database_uri_from=uri_from,
            data_dir=data_dir.resolve(),
            pool_max_size=pool_max_size,
            retention_days=retention_days,
        )
