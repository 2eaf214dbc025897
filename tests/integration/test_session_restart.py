"""An HTTP tool server that restarts forgets its MCP sessions (HTTP 404, "Session not found"): the
executor's warm session to it is replaced and the call sent again on a new one, instead of every
call failing until the executor restarts. A real server (tests/servers/echo_http.py) over streamable
HTTP, through the executor's own SessionPool."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from writ.runtime.processes import free_port
from writ_common import events as ev
from writ_executor.sessions import SessionPool

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

ECHO = Path(__file__).resolve().parents[1] / "servers" / "echo_http.py"


@contextmanager
def echo_server(port: int) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, str(ECHO), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "echo_http.py did not start"
                time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_a_restarted_http_server_gets_a_new_session_and_the_call_goes_through() -> None:
    port = free_port()
    server = ev.ServerRegistered(name="echo", transport="http", url=f"http://127.0.0.1:{port}/mcp")
    pool = SessionPool()
    try:
        with echo_server(port):
            first = await pool.call(server, "echo", {"text": "before"}, meta={}, timeout=10)
        with echo_server(port):  # the same URL, a new process: it knows no session
            second = await pool.call(server, "echo", {"text": "after"}, meta={}, timeout=10)
            third = await pool.call(server, "echo", {"text": "again"}, meta={}, timeout=10)
    finally:
        await pool.close()
    assert [r.is_error for r in (first, second, third)] == [False, False, False]
    assert "after" in str(second.content[0].model_dump()) and "again" in str(third.content[0].model_dump())


async def test_a_session_the_server_forgot_is_seen_by_a_ping_and_a_new_one_subscribes_again() -> None:
    """No call needed: the executor pings the sessions that carry live subscriptions, and each new
    session runs the pool's on_open (where the executor re-subscribes) before any call uses it."""
    port = free_port()
    server = ev.ServerRegistered(name="echo", transport="http", url=f"http://127.0.0.1:{port}/mcp")
    opened: list[object] = []

    async def on_open(name: str, session: object) -> set[str]:
        opened.append(session)
        return {f"watch://{name}"}

    pool = SessionPool(on_open=on_open)
    try:
        with echo_server(port):
            await pool.open(server)
            kept = await pool.forgotten("echo", 5.0)
            assert pool.holds("echo", "watch://echo")
        with echo_server(port):  # the same URL, a new process: it knows no session
            lost = await pool.forgotten("echo", 5.0)
            assert not pool.is_open("echo")
            await pool.open(server)
    finally:
        await pool.close()
    assert (kept, lost, len(opened)) == (False, True, 2)
    assert opened[0] is not opened[1]
