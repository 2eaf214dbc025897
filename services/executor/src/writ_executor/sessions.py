"""Warm MCP sessions, one per tool server, reused across calls.

An MCP session's transport must be opened and closed in the same task (anyio cancel scopes),
so each session lives in its own task and calls are made from any task through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TextIO, cast

from mcp import ClientSession
from mcp.client.session import IncomingMessage
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CONNECTION_CLOSED,
    REQUEST_TIMEOUT,
    CallToolResult,
    RequestParamsMeta,
    ToolListChangedNotification,
)

from writ_common import events as ev
from writ_common.mcp_client import open_session

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0

Stderr = Callable[[], AbstractContextManager[TextIO | None]]


class ServerUnavailable(Exception):
    """The tool server could not be reached or dropped the connection: retryable."""


class CallInterrupted(Exception):
    """The call was sent but no answer came back: it may or may not have taken effect."""


ToolsChanged = Callable[[str], None]


class _Warm:
    def __init__(self, server: ev.ServerRegistered, stderr: Stderr, on_tools_changed: ToolsChanged) -> None:
        self.server = server  # resolved: it may hold secret values, so it is never logged or recorded
        self._stderr = stderr
        self._on_tools_changed = on_tools_changed
        self.session: ClientSession | None = None
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()
        self.error: BaseException | None = None
        self.in_flight = 0  # calls sent on this session and not yet answered
        self.task = asyncio.create_task(self._hold(), name=f"mcp-session-{server.name}")

    async def _hold(self) -> None:
        try:
            with self._stderr() if self.server.transport == "stdio" else nullcontext(None) as errlog:
                async with open_session(self.server, errlog=errlog, on_message=self._on_message) as session:
                    self.session = session
                    self.ready.set()
                    await self.stop.wait()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.session = None
            self.ready.set()

    async def _on_message(self, message: IncomingMessage) -> None:
        # Runs in the session's receive loop: hand over, never block it.
        if isinstance(message, ToolListChangedNotification):
            self._on_tools_changed(self.server.name)

    @property
    def alive(self) -> bool:
        return not self.task.done() and not self.stop.is_set()

    async def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self.task, 10)


class SessionPool:
    """One warm session per server; a dead or reconfigured one (a changed secret too) is replaced
    on next use. ``stderr`` gives each stdio server process its stderr (default: ours)."""

    def __init__(self, stderr: Stderr | None = None, on_tools_changed: ToolsChanged | None = None) -> None:
        self._warm: dict[str, _Warm] = {}
        self._lock = asyncio.Lock()
        self._stderr: Stderr = stderr or (lambda: nullcontext(None))
        self._on_tools_changed: ToolsChanged = on_tools_changed or (lambda _name: None)

    async def _session(self, server: ev.ServerRegistered) -> tuple[_Warm, ClientSession]:
        async with self._lock:
            warm = self._warm.get(server.name)
            if warm is not None and (not warm.alive or warm.server != server):
                await warm.close()
                warm = None
            if warm is None:
                warm = self._warm[server.name] = _Warm(server, self._stderr, self._on_tools_changed)
        try:
            await asyncio.wait_for(warm.ready.wait(), CONNECT_TIMEOUT)
        except TimeoutError as exc:
            raise ServerUnavailable(f"server {server.name!r} did not start within {CONNECT_TIMEOUT:g}s") from exc
        if warm.session is None:
            raise ServerUnavailable(f"server {server.name!r} could not be started: {warm.error!r}")
        return warm, warm.session

    async def call(
        self,
        server: ev.ServerRegistered,
        tool: str,
        arguments: dict[str, Any],
        *,
        meta: dict[str, Any],
        timeout: float,
        on_session: Callable[[], None] | None = None,
    ) -> CallToolResult:
        """Call ``tool`` on ``server`` within ``timeout`` seconds; ``on_session()`` once a session is
        ready, just before the request is sent (so a caller can time the call without the start).

        Raises:
            ServerUnavailable: the server could not be reached; the call was not sent.
            CallInterrupted: the session broke or timed out after sending; the call may have run.
            MCPError: the server refused the request (a protocol-level error).
        """
        warm, session = await self._session(server)
        if on_session is not None:
            on_session()
        warm.in_flight += 1
        try:
            return await asyncio.wait_for(
                session.call_tool(tool, arguments, read_timeout_seconds=timeout, meta=cast(RequestParamsMeta, meta)),
                timeout,
            )
        except MCPError as exc:
            if exc.code not in (CONNECTION_CLOSED, REQUEST_TIMEOUT):
                raise
            await self._after_failure(warm, timed_out=exc.code == REQUEST_TIMEOUT)
            raise CallInterrupted(f"{server.name!r}: {exc.message}") from exc
        except TimeoutError as exc:
            await self._after_failure(warm, timed_out=True)
            raise CallInterrupted(f"no answer from {server.name!r} within {timeout:.1f}s") from exc
        except Exception as exc:
            await self._after_failure(warm, timed_out=False)
            raise CallInterrupted(f"connection to {server.name!r} broke during the call: {exc!r}") from exc
        finally:
            warm.in_flight -= 1

    async def _after_failure(self, warm: _Warm, *, timed_out: bool) -> None:
        """A broken session is replaced; a call that only timed out does not take down the calls
        still running beside it on the same session (a stuck session alone is replaced)."""
        if timed_out and warm.in_flight > 1:
            return
        await self._discard(warm)

    async def _discard(self, warm: _Warm) -> None:
        async with self._lock:
            if self._warm.get(warm.server.name) is warm:
                del self._warm[warm.server.name]
        await warm.close()

    async def discard(self, name: str) -> None:
        """Close a server's session; the next call starts a fresh one (and a fresh stdio process)."""
        async with self._lock:
            warm = self._warm.pop(name, None)
        if warm is not None:
            await warm.close()

    async def close(self) -> None:
        for warm in list(self._warm.values()):
            await warm.close()
        self._warm.clear()
