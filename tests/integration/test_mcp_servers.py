"""The real MCP servers used by the executor's fault tests, driven directly with the ``mcp`` client.

``mcp-server-sqlite`` (third party, own venv) and ``tests/servers/faulty_stdio.py`` (ours) both
speak stdio; these tests pin down the behaviour the fault tests rely on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import cast

import anyio
import pytest
from mcp import ClientSession, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult, RequestParamsMeta, TextContent

pytestmark = pytest.mark.integration

IDEM = "writ/idempotency_key"
CALL_TIMEOUT_S = 20.0

FaultyFactory = Callable[[Path], tuple[list[str], dict[str, str]]]


@asynccontextmanager
async def mcp_session(argv: list[str], errlog: Path, env: dict[str, str] | None = None) -> AsyncIterator[ClientSession]:
    """An initialized client session on a freshly spawned stdio server (stopped on exit)."""
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=env)
    with errlog.open("a") as err:
        async with stdio_client(params, errlog=err) as (read, write), ClientSession(read, write) as session:
            with anyio.fail_after(CALL_TIMEOUT_S):
                await session.initialize()
            yield session


def idem(key: str) -> RequestParamsMeta:
    """Request ``_meta`` carrying an idempotency key (mypy cannot check the open TypedDict's extra keys)."""
    return cast(RequestParamsMeta, {IDEM: key})


def text_of(result: CallToolResult) -> str:
    assert not result.is_error, result
    first = result.content[0]
    assert isinstance(first, TextContent)
    return first.text


def db_count(db: Path, sql: str, *args: object) -> int:
    with closing(sqlite3.connect(db)) as conn:
        (n,) = conn.execute(sql, args).fetchone()
    return int(n)


# --- mcp-server-sqlite ---------------------------------------------------------------------


async def test_sqlite_server_lists_its_tools(sqlite_mcp: Callable[[Path], list[str]], tmp_path: Path) -> None:
    async with mcp_session(sqlite_mcp(tmp_path / "s.db"), tmp_path / "sqlite.err") as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert {"read_query", "write_query", "create_table", "list_tables", "describe_table"} <= set(tools)
    assert tools["write_query"].input_schema["required"] == ["query"]


async def test_sqlite_server_round_trips_a_table(sqlite_mcp: Callable[[Path], list[str]], tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with mcp_session(sqlite_mcp(db), tmp_path / "sqlite.err") as session:
        with anyio.fail_after(CALL_TIMEOUT_S):
            created = await session.call_tool("create_table", {"query": "CREATE TABLE t (id INTEGER, v TEXT)"})
            assert text_of(created) == "Table created successfully"
            for i in range(2):
                wrote = await session.call_tool(
                    "write_query", {"query": f"INSERT INTO t VALUES ({i}, 'v{i}')"}, meta=idem(f"k{i}")
                )
                assert text_of(wrote) == "[{'affected_rows': 1}]"
            read = await session.call_tool("read_query", {"query": "SELECT COUNT(*) AS n FROM t"})
    assert text_of(read) == "[{'n': 2}]"
    assert db_count(db, "SELECT COUNT(*) FROM t") == 2  # really on disk, at the path we gave


# --- faulty_stdio ---------------------------------------------------------------------------


async def test_faulty_tools_declare_their_annotations(faulty_mcp: FaultyFactory, tmp_path: Path) -> None:
    argv, env = faulty_mcp(tmp_path / "f.db")
    async with mcp_session(argv, tmp_path / "faulty.err", env) as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert set(tools) == {"put", "append_row", "slow", "crash", "count"}
    hints = {
        name: (a.idempotent_hint, a.destructive_hint, a.read_only_hint)
        for name, tool in tools.items()
        if (a := tool.annotations) is not None
    }
    assert hints["put"] == (True, False, False)
    assert hints["append_row"] == (False, True, False)
    assert hints["slow"] == (False, False, False)
    assert hints["count"][2] is True
    assert "ctx" not in tools["put"].input_schema["properties"]  # the Context is injected, not an argument


async def test_put_honours_the_idempotency_key(faulty_mcp: FaultyFactory, tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    argv, env = faulty_mcp(db)
    with anyio.fail_after(CALL_TIMEOUT_S):
        async with mcp_session(argv, tmp_path / "faulty.err", env) as session:
            first = await session.call_tool("put", {"key": "a", "value": "1"}, meta=idem("k1"))
            again = await session.call_tool("put", {"key": "a", "value": "2"}, meta=idem("k1"))
            other = await session.call_tool("put", {"key": "a", "value": "3"}, meta=idem("k2"))
            # Without meta the key itself is the idempotency key.
            await session.call_tool("put", {"key": "b", "value": "x"})
            await session.call_tool("put", {"key": "b", "value": "x"})
    assert text_of(first) == text_of(again) == "stored a=1"
    assert text_of(other) == "stored a=3"
    assert db_count(db, "SELECT COUNT(*) FROM writes") == 3
    assert db_count(db, "SELECT calls FROM writes WHERE idem_key = ?", "k1") == 2
    assert db_count(db, "SELECT calls FROM writes WHERE idem_key = ?", "k2") == 1
    assert db_count(db, "SELECT calls FROM writes WHERE idem_key = ?", "b") == 2


async def test_append_row_is_not_idempotent(faulty_mcp: FaultyFactory, tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    argv, env = faulty_mcp(db)
    with anyio.fail_after(CALL_TIMEOUT_S):
        async with mcp_session(argv, tmp_path / "faulty.err", env) as session:
            for _ in range(2):
                await session.call_tool("append_row", {"token": "t"}, meta=idem("same"))
            await session.call_tool("slow", {"seconds": 0.05, "token": "s"})
            counted_t = await session.call_tool("count", {"token": "t"})
            counted_all = await session.call_tool("count", {})
    assert db_count(db, "SELECT COUNT(*) FROM rows WHERE token = 't'") == 2
    assert text_of(counted_t) == "2"
    assert text_of(counted_all) == "3"


async def test_crash_fails_the_call_and_a_new_session_works(faulty_mcp: FaultyFactory, tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    argv, env = faulty_mcp(db)
    errlog = tmp_path / "faulty.err"
    failures: list[MCPError] = []
    # A timeout here would escape as TimeoutError, not as the expected group.
    with pytest.raises(ExceptionGroup) as caught, anyio.fail_after(CALL_TIMEOUT_S):
        async with mcp_session(argv, errlog, env) as session:
            await session.call_tool("append_row", {"token": "before"})
            try:
                await session.call_tool("crash", {})
            except MCPError as exc:  # the pending call fails; the transport re-raises it on exit
                failures.append(exc)
                raise
    assert [str(exc) for exc in failures] == ["Connection closed"]
    assert caught.group_contains(MCPError, match="Connection closed")
    # The effect before the crash stuck, and a fresh process serves the same database.
    with anyio.fail_after(CALL_TIMEOUT_S):
        async with mcp_session(argv, errlog, env) as session:
            await session.call_tool("append_row", {"token": "after"})
            counted = await session.call_tool("count", {})
    assert text_of(counted) == "2"
