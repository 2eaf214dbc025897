"""A small MCP server over stdio whose tools misbehave on purpose, for executor fault tests.

Every effect lands in the SQLite file named by the ``FAULTY_DB`` environment variable, so a
test can count exactly how many times a side effect really happened:

* ``put``        idempotent; honours the ``writ/idempotency_key`` in the request ``_meta``
                 (falls back to ``key``): a repeat inserts nothing, bumps ``calls`` and
                 returns the first call's result.
* ``append_row`` not idempotent: one new row in ``rows`` per call.
* ``slow``       sleeps, then appends a row (for timeouts and cancellation).
* ``crash``      kills the process with exit status 3 without answering.
* ``count``      read-only: rows in ``rows`` (optionally for one token).

Usage: FAULTY_DB=/path/to/db python tests/servers/faulty_stdio.py
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from datetime import UTC, datetime

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

IDEMPOTENCY_META_KEY = "writ/idempotency_key"

SCHEMA = """
CREATE TABLE IF NOT EXISTS writes (idem_key TEXT PRIMARY KEY, key TEXT, value TEXT, calls INTEGER);
CREATE TABLE IF NOT EXISTS rows (token TEXT, at TEXT);
"""

server = MCPServer("faulty")


def _connect() -> sqlite3.Connection:
    conn = sqlite3.connect(os.environ["FAULTY_DB"], timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def _init_db() -> None:
    with closing(_connect()) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(SCHEMA)


def _idempotency_key(ctx: Context) -> str | None:
    """The caller's idempotency key from the request's ``_meta``, if it sent one."""
    meta = ctx.request_context.meta or {}
    value = meta.get(IDEMPOTENCY_META_KEY)
    return value if isinstance(value, str) and value else None


def _append(token: str) -> None:
    with closing(_connect()) as conn:
        conn.execute("INSERT INTO rows (token, at) VALUES (?, ?)", (token, datetime.now(UTC).isoformat()))


@server.tool(annotations=ToolAnnotations(idempotent_hint=True, destructive_hint=False, read_only_hint=False))
def put(key: str, value: str, ctx: Context) -> str:
    """Store value under key; a repeat with the same idempotency key changes nothing."""
    idem_key = _idempotency_key(ctx) or key
    with closing(_connect()) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO writes (idem_key, key, value, calls) VALUES (?, ?, ?, 1)"
            " ON CONFLICT (idem_key) DO UPDATE SET calls = calls + 1",
            (idem_key, key, value),
        )
        stored_key, stored_value = conn.execute(
            "SELECT key, value FROM writes WHERE idem_key = ?", (idem_key,)
        ).fetchone()
        conn.execute("COMMIT")
    return f"stored {stored_key}={stored_value}"


@server.tool(annotations=ToolAnnotations(idempotent_hint=False, destructive_hint=True, read_only_hint=False))
def append_row(token: str) -> str:
    """Append one row for token, every time it is called."""
    _append(token)
    return f"appended {token}"


@server.tool(annotations=ToolAnnotations(idempotent_hint=False, destructive_hint=False, read_only_hint=False))
async def slow(seconds: float, token: str) -> str:
    """Sleep for seconds, then append one row for token."""
    await anyio.sleep(seconds)
    await anyio.to_thread.run_sync(_append, token)
    return f"slept {seconds}s, appended {token}"


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False))
def crash() -> str:
    """Kill the server process at once, without answering."""
    os._exit(3)


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def count(token: str | None = None) -> int:
    """Number of rows in rows, for token if given."""
    with closing(_connect()) as conn:
        if token is None:
            (n,) = conn.execute("SELECT COUNT(*) FROM rows").fetchone()
        else:
            (n,) = conn.execute("SELECT COUNT(*) FROM rows WHERE token = ?", (token,)).fetchone()
    return int(n)


if __name__ == "__main__":
    _init_db()
    server.run("stdio")
