"""Private copies of the seeded template database, for a test or a module of tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql


def with_dbname(uri: str, dbname: str) -> str:
    """``uri`` pointing at database ``dbname``."""
    info = psycopg.conninfo.conninfo_to_dict(uri)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo("", **info)


def admin(uri: str, statement: sql.Composable) -> None:
    """Run ``statement`` outside a transaction (CREATE / DROP DATABASE need that)."""
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(statement)


def drop_database(server_uri: str, name: str) -> None:
    """Drop database ``name`` if it exists, ending its sessions."""
    admin(
        server_uri, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    )


@contextmanager
def database_copy(server_uri: str, template: str, prefix: str) -> Iterator[str]:
    """A new database copied from ``template`` (its URI), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin(
        server_uri,
        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        ),
    )
    try:
        yield with_dbname(server_uri, name)
    finally:
        drop_database(server_uri, name)
