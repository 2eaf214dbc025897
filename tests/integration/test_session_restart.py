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
