"""Migrations: an index built concurrently finishes whatever an earlier attempt left."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from runtime.errors import DatabaseError
from state.db import CONNECTION_KWARGS, MIGRATIONS_DIR, load_migrations, migrate

PROBE_INDEX = "CREATE UNIQUE INDEX CONCURRENTLY probe_unique ON probe (x);\n"


def migrations_plus(tmp_path: Path, sql: str) -> Path:
    """The project's migrations and one more, ``sql``, in a directory of their own."""
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    (directory / f"{len(load_migrations()) + 1:04d}_probe.sql").write_text(sql)
    return directory


async def probe_index(uri: str) -> tuple[int, bool] | None:
    """The oid of ``probe_unique`` and whether it is valid; None when there is none."""
    async with await psycopg.AsyncConnection.connect(uri, **CONNECTION_KWARGS) as conn:
        cur = await conn.execute(
            "SELECT indexrelid::integer AS oid, indisvalid FROM pg_index"
            " WHERE indexrelid = to_regclass('probe_unique')"
        )
        row = await cur.fetchone()
    return None if row is None else (row["oid"], bool(row["indisvalid"]))


@pytest.fixture
async def probe_table(db_uri: str) -> str:
    """A migrated database with table ``probe`` whose unique index build once failed."""
    async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as conn:
        await conn.execute("CREATE TABLE probe (x integer)")
        await conn.execute("INSERT INTO probe VALUES (1), (1)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            await conn.execute(PROBE_INDEX)
        await conn.execute("DELETE FROM probe")
    return db_uri


async def test_an_index_an_earlier_build_left_invalid_is_built_again(
    probe_table: str, tmp_path: Path
) -> None:
    left = await probe_index(probe_table)
    assert left is not None and not left[1]  # what a failed or killed build leaves

    applied = await migrate(probe_table, migrations_plus(tmp_path, PROBE_INDEX))

    assert applied == [f"{len(load_migrations()) + 1:04d}_probe"]
    built = await probe_index(probe_table)
    assert built is not None and built[1]
    assert await migrate(probe_table, migrations_plus(tmp_path / "again", PROBE_INDEX)) == []


async def test_an_index_built_before_its_version_row_was_written_is_kept(
    probe_table: str, tmp_path: Path
) -> None:
    async with await psycopg.AsyncConnection.connect(probe_table, **CONNECTION_KWARGS) as conn:
        await conn.execute("DROP INDEX probe_unique")
        await conn.execute(PROBE_INDEX)  # built; the process died before recording it
    built = await probe_index(probe_table)
    assert built is not None and built[1]

    applied = await migrate(probe_table, migrations_plus(tmp_path, PROBE_INDEX))

    assert applied == [f"{len(load_migrations()) + 1:04d}_probe"]
    assert await probe_index(probe_table) == built  # the same index: not built again


@pytest.mark.parametrize(
    "sql",
    [
        PROBE_INDEX + "ALTER TABLE probe ADD COLUMN y integer;\n",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS probe_unique ON probe (x);\n",
    ],
)
def test_a_concurrent_build_beside_other_sql_is_refused_naming_the_file(
    tmp_path: Path, sql: str
) -> None:
    directory = migrations_plus(tmp_path, sql)
    with pytest.raises(DatabaseError, match=r"_probe\.sql builds an index CONCURRENTLY"):
        load_migrations(directory)


def test_the_projects_concurrent_builds_name_their_index() -> None:
    built = {m.concurrent_index for m in load_migrations() if m.concurrent_index}
    assert built == {"runs_updated", "audit_events_tool_calls_created"}
