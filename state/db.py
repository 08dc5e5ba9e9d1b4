"""Where the database is, how to reach it, and how its schema gets there.

`PAYABLES_DATABASE_URI`, else `DATABASE_URI`, selects any Postgres (`langgraph dev` claims
`DATABASE_URI` for itself; see `runtime.settings.Settings`). Unset, an embedded PostgreSQL 16
(pgserver) starts on demand with its cluster under `.data/pg`; it stops when the last
process using it exits.
Migrations are versioned SQL files applied once under an advisory lock, together with the
LangGraph checkpointer's own `setup()`, by `migrate()`; requests never run DDL.
"""

from __future__ import annotations

import asyncio
import logging
import re
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from guards.redaction import redact_text
from runtime.errors import ConfigError, DatabaseError
from runtime.settings import Settings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK_ID = 0x7061796162  # "payab"

THREAD_LOCK_CLASS = 0x70617962  # "payb"
"""Advisory-lock key space of thread locks, ``(class, hashtext(thread_id))``: every run of a
thread holds its lock while it runs: runs of the CLI and evals (`runtime.agent.Agent.thread_lock`)
and runs of the LangGraph server (`graphs.payables.served_graph`). Any constant works as long
as every process uses the same one; it keeps these apart from other advisory locks."""


async def try_thread_lock(conn: psycopg.AsyncConnection[Any], thread_id: str) -> bool:
    """Take ``thread_id``'s lock on ``conn`` (a `Database.lock_connection`) if it is free.

    A session-level advisory lock: it holds until the connection unlocks it or closes (the
    process dying closes it). Returns whether it was taken; never waits.
    """
    cur = await conn.execute(
        "SELECT pg_try_advisory_lock(%s, hashtext(%s)) AS locked", (THREAD_LOCK_CLASS, thread_id)
    )
    row = await cur.fetchone()
    return row is not None and bool(row["locked"])


class ThreadLockLost(DatabaseError, RuntimeError):
    """The connection holding a run's thread lock died, so another process may run it now.

    A `RuntimeError` too, so the LangGraph server passes its message on (see `BadInput`).
    """


class ThreadLock:
    """``thread_id``'s lock, held on a lock connection of its own while a run runs.

    The lock dies with its connection: when Postgres restarts (or the connection is
    killed), any other process can take the thread while this one goes on, unaware.
    `check` notices without a round trip: it reads what the server sent the idle
    connection (a dying backend's farewell, then the socket's end). The run checks before
    each step (`graphs.payables.checks_thread_lock`), each checkpoint write
    (`state.checkpointer.ThreadLockedSaver`) and each tool attempt (`tools.gate`). Once
    lost the lock is not taken back: another process may have run steps of the thread
    since, from state this run no longer has.
    """

    def __init__(self, database: Database, thread_id: str) -> None:
        """Not yet taken: `take` it."""
        self.database = database
        self.thread_id = thread_id
        self._stack: AsyncExitStack | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def take(self, *, wait_s: float = 0.0) -> bool:
        """Take the lock, trying for up to ``wait_s``; whether it was taken."""
        stack = AsyncExitStack()
        try:
            conn = await stack.enter_async_context(self.database.lock_connection())
            deadline = monotonic() + wait_s
            while not await try_thread_lock(conn, self.thread_id):
                if monotonic() >= deadline:
                    await stack.aclose()
                    return False
                await asyncio.sleep(LOCK_POLL_S)
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._conn = stack, conn
        return True

    async def release(self) -> None:
        """Unlock (closing the connection if it cannot), if taken."""
        stack, self._stack, self._conn = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def lost(self) -> bool:
        """Whether the connection holding the lock has died.

        No round trip: a read of whatever the server has already sent the connection.
        """
        conn = self._conn
        if conn is None or conn.closed:
            return True
        try:
            # The first read takes a terminated backend's message, the second its EOF.
            conn.pgconn.consume_input()
            conn.pgconn.consume_input()
        except psycopg.OperationalError:
            return True
        return conn.pgconn.status != pq.ConnStatus.OK

    def check(self) -> None:
        """Raise `ThreadLockLost` if the lock's connection has died."""
        if self.lost():
            raise ThreadLockLost(
                f"Thread {self.thread_id}'s lock was lost: the database connection holding "
                "it closed (as when Postgres restarts), so another process may be running "
                "the thread. This process stopped before its next step. `payables show "
                f"{self.thread_id}` says where the thread is; if nothing else is running it, "
                f"`payables continue {self.thread_id}` finishes it."
            )

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """The taken lock as the one the run in the block checks; released as it ends."""
        token = _HELD_THREAD_LOCK.set(self)
        try:
            yield
        finally:
            _HELD_THREAD_LOCK.reset(token)
            await self.release()


_HELD_THREAD_LOCK: ContextVar[ThreadLock | None] = ContextVar("held_thread_lock", default=None)
"""The thread lock of the run executing in this context (`ThreadLock.held`)."""


def check_held_thread_lock(thread_id: str | None = None) -> None:
    """Raise `ThreadLockLost` if the run in this context holds a thread lock that died.

    With ``thread_id``, only a lock on that thread counts. Outside a held lock (a run no
    `payables` command or server run locked, such as the bench's bare graphs) it passes.
    """
    lock = _HELD_THREAD_LOCK.get()
    if lock is not None and (thread_id is None or lock.thread_id == thread_id):
        lock.check()


LOCK_POLL_S = 0.1
"""How often `ThreadLock.take` tries again while it waits."""


async def thread_lock_held(conn: psycopg.AsyncConnection[Any], thread_id: str) -> bool:
    """Whether any session of this database holds ``thread_id``'s lock (a run executing it).

    A two-key advisory lock shows in ``pg_locks`` as (classid, objid, objsubid 2), the
    int4 keys read as unsigned oids.
    """
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = %s::oid AND objid = (hashtext(%s)::bigint & 4294967295)::oid"
        " AND objsubid = 2"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
        " AS held",
        (THREAD_LOCK_CLASS, thread_id),
    )
    row = await cur.fetchone()
    return row is not None and bool(row["held"])


# pgserver stops its postmaster when the owning object is collected; keep it alive for the
# life of the process.
_embedded_servers: dict[Path, Any] = {}

CONNECTION_KWARGS: dict[str, Any] = {
    # The checkpointer's setup() runs CREATE INDEX CONCURRENTLY, which refuses transactions.
    "autocommit": True,
    # Poolers (pgbouncer) break server-side prepared statements.
    "prepare_threshold": 0,
    "row_factory": dict_row,
}


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop the processes that died without saying so from pgserver's list of users.

    pgserver stops the cluster when the last process on its list (``.handle_pids.json``)
    exits, at `atexit`. One killed by a signal (a `langgraph dev` worker stopped with
    SIGTERM, a `kill -9`) never leaves the list, so no later process was ever the last and
    Postgres ran on after every command. Under pgserver's own inter-process lock.
    """
    from pgserver.postgres_server import PostgresServer
    from pgserver.utils import DiskList, process_is_running

    with PostgresServer._lock:
        handles = DiskList(pgdata / ".handle_pids.json")
        pids = handles.get()
        alive = [pid for pid in pids if process_is_running(pid)]
        if alive != pids:
            handles.put(alive)


def embedded_uri(data_dir: Path) -> str:
    """Start (or join) the embedded Postgres whose cluster lives in ``data_dir / "pg"``."""
    pgdata = data_dir / "pg"
    server = _embedded_servers.get(pgdata)
    if server is None:
        try:
            pgdata.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = "a file is there" if data_dir.is_file() else exc.strerror or str(exc)
            raise ConfigError(
                f"The embedded Postgres cannot keep its files in {data_dir} "
                f"(PAYABLES_DATA_DIR): {why}. Point PAYABLES_DATA_DIR at a "
                "folder you can write, or unset it for .data/ in the project."
            ) from exc
        try:
            with warnings.catch_warnings():
                # platformdirs warns that root has no XDG_RUNTIME_DIR; harmless here.
                warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
                from pgserver import get_server  # type: ignore[attr-defined]  # lazy import

                _forget_dead_handles(pgdata)
                server = get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:  # pgserver raises bare Exceptions on start failures
            raise DatabaseError(
                f"The embedded Postgres in {pgdata} did not start: {exc}. "
                "Delete that folder to start over, or set DATABASE_URI to a running Postgres."
            ) from exc
        _embedded_servers[pgdata] = server
    uri: str = server.get_uri()
    return uri


def database_uri(settings: Settings | None = None) -> str:
    """The Postgres URI this process uses: the configured one, else the embedded server."""
    settings = settings or Settings.from_env()
    if settings.database_uri:
        try:
            psycopg.conninfo.conninfo_to_dict(settings.database_uri)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(
                "The database URI (PAYABLES_DATABASE_URI, else DATABASE_URI) is not a Postgres "
                f"connection string: {redact_text(str(exc))}. Write it as "
                "postgresql://USER:PASSWORD@HOST:PORT/DBNAME, or unset it to use the embedded "
                "Postgres."
            ) from exc
        return settings.database_uri
    return embedded_uri(settings.data_dir)


_CONCURRENT_INDEX = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?P<name>[a-z_][a-z0-9_]*)\s+ON\s+[^;]+",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Migration:
    """One versioned SQL file, ``NNNN_name.sql``.

    Most run in one transaction with their version row. A file that builds an index
    concurrently (writes to the table go on during the build, where a plain CREATE INDEX
    blocks them) holds that one statement only, since Postgres builds it outside any
    transaction; `concurrent_index` names the index.
    """

    version: int
    name: str
    sql: str
    concurrent_index: str | None = None


def _concurrent_index(path: Path, sql: str) -> str | None:
    """The index ``sql`` builds concurrently, None if it builds none; refuses a mixed file."""
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines()).strip()
    if not re.search(r"\bCONCURRENTLY\b", code, re.IGNORECASE):
        return None
    found = _CONCURRENT_INDEX.fullmatch(code.removesuffix(";").strip())
    if found is None:
        raise DatabaseError(
            f"Migration file {path.name} builds an index CONCURRENTLY beside other SQL (or "
            "with IF NOT EXISTS). Postgres runs such a build outside any transaction, so it "
            "must be the file's only statement, named: CREATE [UNIQUE] INDEX CONCURRENTLY "
            "<name> ON ...; put the rest in a migration of its own."
        )
    return found["name"].lower()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read the migration files in version order, refusing gaps and duplicates."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        number, _, name = path.stem.partition("_")
        if not number.isdigit() or not name:
            raise DatabaseError(f"Migration file {path.name} must be named NNNN_name.sql.")
        sql = path.read_text()
        migrations.append(Migration(int(number), name, sql, _concurrent_index(path, sql)))
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise DatabaseError(f"Migration versions must run 1..N without gaps, found {versions}.")
    return migrations


async def _build_index_concurrently(conn: psycopg.AsyncConnection[Any], m: Migration) -> None:
    """Run ``m``'s concurrent index build, picking up where an earlier attempt stopped.

    A build that failed or was killed leaves its index behind marked invalid (unused by
    queries, yet in the way of a new build of the same name): it is dropped and built
    again. A valid one means the build finished and only the version row was not written.
    """
    cur = await conn.execute(
        "SELECT i.indisvalid FROM pg_index AS i WHERE i.indexrelid = to_regclass(%s)",
        (m.concurrent_index,),
    )
    found = await cur.fetchone()
    if found is not None and found["indisvalid"]:
        return
    if found is not None:
        log.warning("dropping index %s left invalid by an earlier build", m.concurrent_index)
        await conn.execute(f'DROP INDEX CONCURRENTLY "{m.concurrent_index}"', prepare=False)
    await conn.execute(m.sql.encode(), prepare=False)


async def migrate(uri: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations and the checkpointer's setup; return what was applied.

    Safe to call from several processes at once: an advisory lock serialises them and each
    migration runs in its own transaction with its version row, except a concurrent index
    build, which Postgres runs outside any (`Migration`); its version row follows it.
    """
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    applied: list[str] = []
    try:
        async with await psycopg.AsyncConnection.connect(uri, **CONNECTION_KWARGS) as conn:
            await conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_ID,))
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                cur = await conn.execute("SELECT version FROM schema_migrations")
                done = {row["version"] for row in await cur.fetchall()}
                for migration in load_migrations(directory):
                    if migration.version in done:
                        continue
                    if migration.concurrent_index:
                        await _build_index_concurrently(conn, migration)
                    async with conn.transaction():
                        if not migration.concurrent_index:
                            await conn.execute(migration.sql.encode(), prepare=False)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                            (migration.version, migration.name),
                        )
                    applied.append(f"{migration.version:04d}_{migration.name}")
                await AsyncPostgresSaver(conn).setup()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_ID,))
    except psycopg.OperationalError as exc:
        raise unreachable(uri, exc) from exc
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    return applied


def unreachable(uri: str, exc: psycopg.OperationalError) -> DatabaseError:
    """The error for a Postgres that cannot be reached at ``uri``."""
    return DatabaseError(
        f"Cannot reach Postgres at {redact_uri(uri)}: {exc}. "
        "Check PAYABLES_DATABASE_URI (else DATABASE_URI), or unset it to use the embedded "
        "Postgres."
    )


async def schema_status(uri: str) -> dict[str, Any]:
    """Which migrations are applied and which are pending."""
    try:
        async with await psycopg.AsyncConnection.connect(uri, **CONNECTION_KWARGS) as conn:
            cur = await conn.execute("SELECT to_regclass('schema_migrations') AS t")
            row = await cur.fetchone()
            done: set[int] = set()
            if row and row["t"]:
                cur = await conn.execute("SELECT version FROM schema_migrations")
                done = {r["version"] for r in await cur.fetchall()}
            cur = await conn.execute("SHOW server_version")
            version_row = await cur.fetchone()
    except psycopg.OperationalError as exc:
        raise unreachable(uri, exc) from exc
    migrations = load_migrations()
    return {
        "server_version": version_row["server_version"] if version_row else None,
        "applied": [f"{m.version:04d}_{m.name}" for m in migrations if m.version in done],
        "pending": [f"{m.version:04d}_{m.name}" for m in migrations if m.version not in done],
    }


def redact_uri(uri: str) -> str:
    """The URI with any password replaced, for messages and logs."""
    info = psycopg.conninfo.conninfo_to_dict(uri)
    if info.get("password"):
        info["password"] = "***"
    return psycopg.conninfo.make_conninfo("", **info)


IDLE_PING_S = 10.0
"""A pooled connection not lent out for longer than this is pinged before it is lent."""


class ConnectionCheck:
    """What the pool checks before it lends a connection, at almost no cost per borrow.

    After a Postgres restart (or a killed backend) the idle connections are dead; lending
    one fails its borrower. The server closes those connections when it goes, so reading
    what is waiting on the socket, without a round trip, finds them: first the server's
    goodbye message, then the end of the stream. A connection not lent for longer than
    `IDLE_PING_S` (it may sit behind a network path that died silently) is also pinged.
    A connection found dead is discarded and replaced by the pool.

    A round trip on every borrow (psycopg_pool's ``check_connection``) would cost two with
    ``prepare_threshold=0``, since an empty query is never cached as prepared: a run
    borrows some fifty times. (A ``reset`` hook could time returns exactly, but it makes
    the pool return every connection through a background worker, late.)
    """

    def __init__(self) -> None:
        """No connection has been lent yet."""
        self._lent_at: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Raise if ``conn`` is dead (the pool then replaces it); return quietly if not."""
        pgconn = conn.pgconn
        for _ in range(2):  # the goodbye message, then the end of the stream
            pgconn.consume_input()  # raises OperationalError on a closed connection
        if pgconn.status != pq.ConnStatus.OK:
            raise psycopg.OperationalError("the pooled connection is no longer open")
        now = monotonic()
        lent_at = self._lent_at.get(conn)
        if lent_at is None or now - lent_at > IDLE_PING_S:
            if conn.autocommit:
                await conn.execute("SELECT 1", prepare=False)
            else:  # a ping outside autocommit would leave a transaction open
                await AsyncConnectionPool.check_connection(conn)
        self._lent_at[conn] = now


class Database:
    """A lazily opened connection pool, one per event loop.

    psycopg's async pool is bound to the loop that opened it; the CLI, tests and the
    LangGraph server each run their own loops, so the pool is keyed by loop.
    """

    def __init__(self, uri: str, *, max_size: int = 10, max_locks: int = 64) -> None:
        """Remember where to connect; nothing opens until the first `connection()`.

        ``max_size`` bounds the shared pool; ``max_locks`` the connections that hold
        session locks (`lock_connection`), one per run in flight.
        """
        self.uri = uri
        self.max_size = max_size
        self.max_locks = max_locks
        self._pools: dict[int, AsyncConnectionPool[Any]] = {}
        self._lock_pools: dict[int, AsyncConnectionPool[Any]] = {}
        self._before_close: list[Callable[[Database], Awaitable[object]]] = []

    def before_close(self, hook: Callable[[Database], Awaitable[object]]) -> None:
        """Have `close` await ``hook(self)`` first, while the pools are still open (once)."""
        if hook not in self._before_close:
            self._before_close.append(hook)

    async def pool(self) -> AsyncConnectionPool[Any]:
        """The open pool for the running loop."""
        return await self._loop_pool(self._pools, "payables", self.max_size)

    async def _loop_pool(
        self, pools: dict[int, AsyncConnectionPool[Any]], name: str, max_size: int
    ) -> AsyncConnectionPool[Any]:
        """The open pool in ``pools`` for the running loop, opened on first use."""
        loop_id = id(asyncio.get_running_loop())
        pool = pools.get(loop_id)
        if pool is None or pool.closed:
            # After a Postgres restart the idle connections are dead; checking each on
            # checkout replaces them instead of failing the caller.
            pool = AsyncConnectionPool(
                self.uri,
                kwargs=CONNECTION_KWARGS,
                min_size=1,
                max_size=max_size,
                open=False,
                name=name,
                check=ConnectionCheck().check,
            )
            await pool.open(wait=True, timeout=30)
            pools[loop_id] = pool
        return pool

    @asynccontextmanager
    async def connection(
        self, wait_s: float | None = None
    ) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        """Borrow a connection (autocommit; open a transaction explicitly to group writes).

        ``wait_s`` bounds the wait for one, in seconds; by default the pool's (30 s).
        """
        pool = await self.pool()
        async with pool.connection(timeout=wait_s) as conn:
            yield conn

    async def _lock_pool(self) -> AsyncConnectionPool[Any]:
        return await self._loop_pool(self._lock_pools, "payables-locks", self.max_locks)

    @asynccontextmanager
    async def lock_connection(self) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        """Borrow a connection to hold session-level advisory locks for the block.

        Every session lock it holds is released as the block ends, before the connection
        goes back to the pool; if that fails the connection is closed instead, which
        releases them too (as the process dying does). These connections are pooled apart
        from `connection`'s: a run holds one for as long as it runs, and must not starve
        the pool its own steps borrow from. Reusing them saves a connection set-up (a new
        Postgres backend) per run.
        """
        pool = await self._lock_pool()
        async with pool.connection() as conn:
            try:
                yield conn
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock_all()")
                except Exception as exc:
                    # Closed, it goes out of the pool and its locks with it: nothing leaks.
                    log.warning("closing a lock connection that could not unlock: %s", exc)
                    await conn.close()
                except BaseException:  # cancelled while unlocking: same, then go on
                    await conn.close()
                    raise

    async def close(self) -> None:
        """Run the `before_close` hooks, then close the pools of the running loop, if any."""
        for hook in self._before_close:
            await hook(self)
        loop_id = id(asyncio.get_running_loop())
        for pools in (self._pools, self._lock_pools):
            pool = pools.pop(loop_id, None)
            if pool is not None:
                await pool.close()


_default_database: Database | None = None


def default_database() -> Database:
    """The process-wide `Database` for the configured URI (created on first use)."""
    global _default_database
    if _default_database is None:
        settings = Settings.from_env()
        _default_database = Database(database_uri(settings), max_size=settings.pool_max_size)
    return _default_database
