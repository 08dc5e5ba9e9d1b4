"""Postgres restarts, or goes away for a while, in the middle of a run.

The test owns a private Postgres (pgserver in a temporary folder) so it can restart it
with `pg_ctl` without disturbing other tests. A sleep failpoint holds the `payables resume`
child at a known point while the server goes down. Afterwards the run has either
completed (the pool replaced its dead connections; a node retried) or ended resumable,
and then `payables continue` completes it. Either way: one payment, the approval kept.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runtime.settings import PROJECT_ROOT
from state.db import CONNECTION_KWARGS, migrate
from state.world import SAMPLE_WORLD_PATH, load_world, read_world
from tests.cli import explain, payables, payables_json
from tests.integration.test_crash_recovery import APPROVE, count
from tests.running import start

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


class PrivatePostgres:
    """A pgserver cluster only this test uses, with stop, start and restart."""

    def __init__(self, data_dir: Path) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            from pgserver import get_server  # type: ignore[attr-defined]

            self.server: Any = get_server(data_dir, cleanup_mode="delete")
        self.uri: str = self.server.get_uri()
        self.socket_dir = psycopg.conninfo.conninfo_to_dict(self.uri)["host"]

    def pg_ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl  # type: ignore[import-untyped]

        pg_ctl(
            ["-w", "-l", str(self.server.log), *args],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
            timeout=60,
        )

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        # The options pgserver starts it with: no TCP, the same socket folder.
        self.pg_ctl("-o", '-h ""', "-o", f"-k {self.socket_dir}", "start")

    def restart(self) -> None:
        self.pg_ctl("-m", "fast", "restart")

    def close(self) -> None:
        try:
            self.stop()
        except Exception:  # already stopped (a failed test may leave it either way)
            pass
        self.server.cleanup()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    # Not under pytest's tmp_path: every pytest session resets /tmp/pytest-of-USER to 0700,
    # which locks out the system user pgserver runs Postgres as (when tests run as root).
    parent = PROJECT_ROOT / ".data" / "test"
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="restart-", dir=parent))
    server = PrivatePostgres(folder / "pg")

    async def prepare() -> None:
        await migrate(server.uri)
        async with await psycopg.AsyncConnection.connect(server.uri, **CONNECTION_KWARGS) as conn:
            await load_world(conn, read_world(SAMPLE_WORLD_PATH))

    asyncio.run(prepare())
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def restart_env(cli_env: dict[str, str], private_postgres: PrivatePostgres) -> dict[str, str]:
    return {**cli_env, "DATABASE_URI": private_postgres.uri}


@pytest.mark.parametrize(
    ("point", "outage"),
    [
        # The reviewer's decision is recorded; the approval step's checkpoint is not yet
        # written when the server restarts under it.
        ("after:approval", "restart"),
        # The payment has committed; the server is down for a few seconds while the run
        # goes on to checkpoint it.
        ("after_commit:schedule_payment", "down for 4s"),
    ],
)
def test_postgres_going_away_mid_run_pays_once_and_keeps_the_approval(
    restart_env: dict[str, str], private_postgres: PrivatePostgres, point: str, outage: str
) -> None:
    db_uri = private_postgres.uri
    thread = "pg-restart"
    view = payables_json(
        restart_env, "run", "Pay INV-1001", "--user", "clerk-ana", "--thread", thread
    )
    assert view["status"] == "interrupted"

    with start(
        {**restart_env, "PAYABLES_FAILPOINTS": f"sleep:{point}:2"},
        "resume",
        thread,
        *APPROVE,
        "--json",
    ) as child:
        child.wait_for(f"failpoint {point}: sleeping")
        if outage == "restart":
            private_postgres.restart()
        else:
            private_postgres.stop()
            time.sleep(4)  # the child wakes while the server is down
            private_postgres.start()
        resumed = child.finish()

    assert "Traceback" not in resumed.stderr, explain(resumed)
    if resumed.returncode == 0:
        assert '"status": "completed"' in resumed.stdout, explain(resumed)
    else:
        # Ended resumable: the message says how to finish it.
        assert resumed.returncode == 1, explain(resumed)
        assert "continue" in resumed.stderr or "deadletters replay" in resumed.stderr
        done = payables_json(restart_env, "continue", thread)
        assert done["status"] == "completed", done["reason"]

    final = payables_json(restart_env, "show", thread)
    assert final["status"] == "completed"
    assert final["result"]["invoices"]["INV-1001"]["actions"] == ["staged", "payment_scheduled"]
    assert count(db_uri, "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'") == 1
    assert (
        count(
            db_uri,
            "SELECT count(*) FROM tool_calls WHERE tool = 'schedule_payment' AND thread_id = %s",
            thread,
        )
        == 1
    )
    assert (
        count(
            db_uri,
            "SELECT count(*) FROM approval_decisions WHERE thread_id = %s"
            " AND reviewer_id = 'rev-1' AND decision = 'approve'",
            thread,
        )
        == 1
    )


def test_a_run_stops_soon_when_postgres_stops_under_it(
    restart_env: dict[str, str], private_postgres: PrivatePostgres
) -> None:
    """The lock's connection dies with the server: the run stops at its next check, and
    exiting does not wait out the pool's 30 s for statistics rows nothing depends on.

    It took 43 s: the payment's first attempt waited its 10 s timeout for a connection
    (only retries checked the lock), then closing waited 30 s to flush ``step_metrics``.
    """
    db_uri = private_postgres.uri
    thread = "pg-stopped"
    view = payables_json(
        restart_env, "run", "Pay INV-1001", "--user", "clerk-ana", "--thread", thread
    )
    assert view["status"] == "interrupted"

    with start(
        {**restart_env, "PAYABLES_FAILPOINTS": "sleep:before:executor:2"},
        "resume",
        thread,
        *APPROVE,
        "--json",
    ) as child:
        child.wait_for("failpoint before:executor: sleeping")
        private_postgres.stop()
        stopped = time.monotonic()
        resumed = child.finish()
        took = time.monotonic() - stopped

    assert resumed.returncode == 1, explain(resumed)
    assert "lock was lost" in resumed.stderr, explain(resumed)
    assert "schedule_payment attempt" not in resumed.stderr, explain(resumed)
    # A bound far from both sides: about 7 s here now, 43 s before; not a speed target.
    assert took < 25, f"took {took:.1f}s to exit\n{explain(resumed)}"

    private_postgres.start()
    done = payables_json(restart_env, "continue", thread)
    assert done["status"] == "completed", done["reason"]
    assert count(db_uri, "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'") == 1


def test_the_embedded_postgres_stops_after_a_user_that_was_killed(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """pgserver stops the cluster when its last user exits. A user killed by a signal (a
    `langgraph dev` worker on SIGTERM) stayed on its list, and Postgres ran on forever."""
    data_dir = tmp_path / "data"
    env = {k: v for k, v in cli_env.items() if k not in ("DATABASE_URI", "PAYABLES_DATABASE_URI")}
    env["PAYABLES_DATA_DIR"] = str(data_dir)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from state.db import embedded_uri;"
            " embedded_uri(Path(sys.argv[1])); print('up', flush=True); time.sleep(600)",
            str(data_dir),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
    finally:
        holder.kill()
        holder.wait()
    postmaster = data_dir / "pg" / "postmaster.pid"
    assert postmaster.exists()
    proc = payables(env, "db", "status")
    assert proc.returncode == 0, explain(proc)
    deadline = time.monotonic() + 30
    while postmaster.exists():
        assert time.monotonic() < deadline, "the embedded Postgres is still running"
        time.sleep(0.2)
