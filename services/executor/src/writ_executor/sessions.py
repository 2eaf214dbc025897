"""Warm MCP sessions, one per tool server, reused across calls.

An MCP session's transport must be opened and closed in the same task (anyio cancel scopes),
so each session lives in its own task and calls are made from any task through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TextIO, TypeVar, cast

from mcp import ClientSession
from mcp.client.session import ClientRequestContext, IncomingMessage
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CONNECTION_CLOSED,
    INVALID_REQUEST,
    REQUEST_TIMEOUT,
    CallToolResult,
    CompleteRequest,
    CompleteResult,
    CreateMessageRequestParams,
    CreateMessageResult,
    CreateMessageResultWithTools,
    ElicitRequestParams,
    ElicitResult,
    EmptyResult,
    ErrorData,
    GetPromptRequest,
    GetPromptResult,
    ListPromptsRequest,
    ListPromptsResult,
    ListResourcesRequest,
    ListResourcesResult,
    ListResourceTemplatesRequest,
    ListResourceTemplatesResult,
    LoggingMessageNotificationParams,
    PaginatedRequestParams,
    PromptListChangedNotification,
    ReadResourceRequest,
    ReadResourceResult,
    RequestParamsMeta,
    ResourceListChangedNotification,
    ResourceUpdatedNotification,
    ServerNotification,
    SubscribeRequest,
    ToolListChangedNotification,
    UnsubscribeRequest,
)
from pydantic import BaseModel, ValidationError

from writ_common import events as ev
from writ_common.mcp_client import open_session
from writ_executor.input_rules import INTERNAL_ERROR, Kind, whose

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0
CLOSE_TIMEOUT = 10.0  # seconds a session has to close (the SDK stops its server within about 4 s)
T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)
# The MCP requests of the governed operations other than tools/call (writ_common.operations), by method.
_REQUESTS: dict[str, Any] = {
    "resources/read": ReadResourceRequest,
    "resources/subscribe": SubscribeRequest,
    "resources/unsubscribe": UnsubscribeRequest,
    "prompts/get": GetPromptRequest,
    "completion/complete": CompleteRequest,
}
# What the gateway lists without an intent: the result type and the member holding the items.
_LISTS: dict[str, tuple[Any, Any, str]] = {
    "resources/list": (ListResourcesRequest, ListResourcesResult, "resources"),
    "resources/templates/list": (ListResourceTemplatesRequest, ListResourceTemplatesResult, "resource_templates"),
    "prompts/list": (ListPromptsRequest, ListPromptsResult, "prompts"),
}
_RESULTS: dict[str, Any] = {
    "resources/read": ReadResourceResult,
    "resources/subscribe": EmptyResult,
    "resources/unsubscribe": EmptyResult,
    "prompts/get": GetPromptResult,
    "completion/complete": CompleteResult,
}

Stderr = Callable[[], AbstractContextManager[TextIO | None]]


class ServerUnavailable(Exception):
    """The tool server could not be reached or dropped the connection: retryable."""


class CallInterrupted(Exception):
    """The call was sent but no answer came back: it may or may not have taken effect."""


ToolsChanged = Callable[[str], None]
# A server's notifications/resources/updated, resources/list_changed or prompts/list_changed, with
# the server's name: handed over from the session's receive loop, so it must not block.
Noticed = Callable[[str, ServerNotification], None]
# Run on each new session before any call uses it: re-subscribes the server's live resources and
# returns the URIs it subscribed.
Resubscribe = Callable[[str, ClientSession], Awaitable[set[str]]]
NOTICED_TYPES = (ResourceUpdatedNotification, ResourceListChangedNotification, PromptListChangedNotification)
# Hands what a server sent during one call (``progress``, or ``message``: a log message) to whoever
# asked for that call.
Relay = Callable[[str, dict[str, Any]], Awaitable[None]]
# Asks the client of one call for input (``sampling`` or ``elicitation``, with the server's params
# as JSON): its result as JSON, or an MCPError for the server.
Ask = Callable[[Kind, dict[str, Any]], Awaitable[dict[str, Any]]]


def session_forgotten(exc: MCPError) -> bool:
    """The server answered that it does not know this session (HTTP 404 on a session id): it has
    restarted, or dropped the session, and ran nothing."""
    message = exc.message.lower()
    return exc.code == INVALID_REQUEST and "session" in message and ("not found" in message or "terminated" in message)


async def send_subscription(
    session: ClientSession, uri: str, wanted: bool, *, meta: dict[str, Any], timeout: float
) -> None:
    """``resources/subscribe`` (``wanted``) or ``resources/unsubscribe`` ``uri`` on ``session``."""
    method = "resources/subscribe" if wanted else "resources/unsubscribe"
    request = _REQUESTS[method].model_validate({"method": method, "params": {"uri": uri, "_meta": meta}})
    await session.send_request(request, EmptyResult, request_read_timeout_seconds=timeout)


async def subscribe_all(session: ClientSession, uris: list[str], timeout: float) -> set[str]:
    """``resources/subscribe`` to each of ``uris`` on ``session``; the URIs the server accepted
    (one it refuses, or does not answer in time, is left out and the others still go)."""
    done: set[str] = set()
    for uri in uris:
        try:
            await asyncio.wait_for(send_subscription(session, uri, True, meta={}, timeout=timeout), timeout)
        except (MCPError, TimeoutError, ValidationError) as exc:
            log.warning("re-subscribing %s: %s", uri, exc)
            continue
        done.add(uri)
    return done


class _Warm:
    def __init__(
        self,
        server: ev.ServerRegistered,
        stderr: Stderr,
        on_tools_changed: ToolsChanged,
        on_notice: Noticed,
        on_open: Resubscribe | None,
    ) -> None:
        self.server = server  # resolved: it may hold secret values, so it is never logged or recorded
        self._stderr = stderr
        self._on_tools_changed = on_tools_changed
        self._on_notice = on_notice
        self._on_open = on_open
        self.subscribed: set[str] = set()  # the resource URIs this session has subscribed to upstream
        self.session: ClientSession | None = None
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()
        self.error: BaseException | None = None
        self.in_flight = 0  # calls sent on this session and not yet answered
        self.relays: list[Relay] = []  # of the calls in flight that want what the server says meanwhile
        self.askers: list[Ask] = []  # of the calls in flight that can ask their client for input
        self.task = asyncio.create_task(self._hold(), name=f"mcp-session-{server.name}")

    async def _hold(self) -> None:
        try:
            with self._stderr() if self.server.transport == "stdio" else nullcontext(None) as errlog:
                async with open_session(
                    self.server,
                    errlog=errlog,
                    on_message=self._on_message,
                    on_log=self._on_log,
                    on_sampling=self._on_sampling,
                    on_elicitation=self._on_elicitation,
                ) as session:
                    if self._on_open is not None:
                        # Before any call: a session the server just started holds no subscription.
                        self.subscribed = await self._on_open(self.server.name, session)
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
        elif isinstance(message, NOTICED_TYPES):
            self._on_notice(self.server.name, message)

    async def _on_log(self, params: LoggingMessageNotificationParams) -> None:
        """A log message belongs to no request in MCP: it is relayed only while exactly one call
        that wants it is in flight on this session (else whose it is cannot be told: dropped)."""
        if self.in_flight == 1 and len(self.relays) == 1:
            with contextlib.suppress(Exception):
                await self.relays[0]("message", params.model_dump(mode="json", by_alias=True, exclude_none=True))

    async def _on_sampling(
        self, context: ClientRequestContext, params: CreateMessageRequestParams
    ) -> CreateMessageResult | CreateMessageResultWithTools | ErrorData:
        result_type = CreateMessageResultWithTools if params.tools or params.tool_choice else CreateMessageResult
        return await self._answered("sampling", params, result_type)

    async def _on_elicitation(
        self, context: ClientRequestContext, params: ElicitRequestParams
    ) -> ElicitResult | ErrorData:
        return await self._answered("elicitation", params, ElicitResult)

    async def _answered(self, kind: Kind, params: BaseModel, result_type: type[R]) -> R | ErrorData:
        """The client's answer to the server's request, read as ``result_type`` (or the error the
        server is told)."""
        answer = await self._ask(kind, params.model_dump(mode="json", by_alias=True, exclude_none=True))
        if isinstance(answer, ErrorData):
            return answer
        try:
            return result_type.model_validate(answer)
        except ValidationError:
            what = "a sampling result" if kind == "sampling" else "an elicitation result"
            return ErrorData(code=INTERNAL_ERROR, message=f"writ: the client's answer is not {what}")

    async def _ask(self, kind: Kind, params: dict[str, Any]) -> dict[str, Any] | ErrorData:
        """A server's request for input goes to the client of the one call in flight on this
        session (MCP names no request it belongs to); with several, whose it is cannot be told."""
        asker = whose(self.askers, self.in_flight)
        if isinstance(asker, str):
            log.warning("%s asked for %s: %s", self.server.name, kind, asker)
            return ErrorData(code=INVALID_REQUEST, message=asker)
        try:
            return await asker(kind, params)
        except MCPError as exc:
            return ErrorData(code=exc.code, message=exc.message)
        except Exception as exc:  # not recorded, or not asked: the server is refused, never left waiting
            log.warning("%s asked for %s; the client could not be asked: %r", self.server.name, kind, exc)
            return ErrorData(code=INTERNAL_ERROR, message=f"writ: the client could not be asked ({type(exc).__name__})")

    @property
    def alive(self) -> bool:
        return not self.task.done() and not self.stop.is_set()

    async def close(self) -> None:
        self.stop.set()
        done, _ = await asyncio.wait({self.task}, timeout=CLOSE_TIMEOUT)
        if not done:
            # Cancelled, not awaited: asyncio.wait_for would wait for the cancellation to finish,
            # and a transport stuck in a shielded shutdown would hold the executor's stop forever.
            log.warning("the session with %r did not close within %gs; left behind", self.server.name, CLOSE_TIMEOUT)
            self.task.cancel()


class SessionPool:
    """One warm session per server; a dead or reconfigured one (a changed secret too) is replaced
    on next use. ``stderr`` gives each stdio server process its stderr (default: ours)."""

    def __init__(
        self,
        stderr: Stderr | None = None,
        on_tools_changed: ToolsChanged | None = None,
        *,
        on_notice: Noticed | None = None,
        on_open: Resubscribe | None = None,
    ) -> None:
        self._warm: dict[str, _Warm] = {}
        self._lock = asyncio.Lock()
        self._stderr: Stderr = stderr or (lambda: nullcontext(None))
        self._on_tools_changed: ToolsChanged = on_tools_changed or (lambda _name: None)
        # Both may be set after construction, before the first session opens.
        self.on_notice: Noticed = on_notice or (lambda _name, _notice: None)
        self.on_open = on_open

    async def _session(self, server: ev.ServerRegistered) -> tuple[_Warm, ClientSession]:
        async with self._lock:
            warm = self._warm.get(server.name)
            if warm is not None and (not warm.alive or warm.server != server):
                await warm.close()
                warm = None
            if warm is None:
                warm = self._warm[server.name] = _Warm(
                    server, self._stderr, self._on_tools_changed, self.on_notice, self.on_open
                )
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
        relay: Relay | None = None,
        ask: Ask | None = None,
        on_session: Callable[[], None] | None = None,
    ) -> CallToolResult:
        """Call ``tool`` on ``server`` within ``timeout`` seconds; ``relay`` gets the server's
        progress for this call (MCP ties it to the request) and its log messages meanwhile;
        ``ask`` answers the server's requests for input (sampling, elicitation) while this is the
        one call in flight on the session (else the server is refused);
        ``on_session()`` runs once a session is ready, just before the request is sent (so a
        caller can time the call without a session's start).

        Raises:
            ServerUnavailable: the server could not be reached; the call was not sent.
            CallInterrupted: the session broke or timed out after sending; the call may have run.
            MCPError: the server refused the request (a protocol-level error).
        """

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if relay is not None:
                with contextlib.suppress(Exception):
                    await relay("progress", {"progress": progress, "total": total, "message": message})

        return await self._send(
            server,
            lambda session: session.call_tool(
                tool,
                arguments,
                read_timeout_seconds=timeout,
                meta=cast(RequestParamsMeta, meta),
                progress_callback=on_progress if relay is not None else None,
            ),
            timeout,
            relay=relay,
            on_session=on_session,
            ask=ask,
        )

    async def request(
        self,
        server: ev.ServerRegistered,
        method: str,
        params: dict[str, Any],
        *,
        meta: dict[str, Any],
        timeout: float,
        on_session: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Send another MCP request (``resources/read``, ``prompts/get``, ...) to ``server`` within
        ``timeout`` seconds; its result as JSON. Raises as :meth:`call`."""
        request = _REQUESTS[method].model_validate({"method": method, "params": {**params, "_meta": meta}})
        result = await self._send(
            server,
            lambda session: session.send_request(request, _RESULTS[method], request_read_timeout_seconds=timeout),
            timeout,
            on_session=on_session,
        )
        dumped: dict[str, Any] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        return dumped

    async def subscription(
        self,
        server: ev.ServerRegistered,
        uri: str,
        wanted: bool,
        *,
        meta: dict[str, Any],
        timeout: float,
        on_session: Callable[[], None] | None = None,
    ) -> bool:
        """``resources/subscribe`` (``wanted``) or ``resources/unsubscribe`` ``uri`` on ``server``'s
        session, unless that session is as wanted already: one upstream subscription serves every
        agent, and a fresh session holds none (no session is opened to unsubscribe). Returns
        whether it was sent. Raises as :meth:`call`."""
        if not wanted and not self.holds(server.name, uri):
            return False

        async def send(session: ClientSession) -> bool:
            warm = self._holding(server.name, session)
            if (warm is not None and uri in warm.subscribed) == wanted:
                return False  # as wanted already
            await send_subscription(session, uri, wanted, meta=meta, timeout=timeout)
            if warm is not None:
                (warm.subscribed.add if wanted else warm.subscribed.discard)(uri)
            return True

        return await self._send(server, send, timeout, on_session=on_session)

    def _holding(self, name: str, session: ClientSession) -> _Warm | None:
        warm = self._warm.get(name)
        return warm if warm is not None and warm.session is session else None

    def is_open(self, name: str) -> bool:
        """Whether ``name`` has a live session now."""
        warm = self._warm.get(name)
        return warm is not None and warm.alive and warm.session is not None

    def holds(self, name: str, uri: str) -> bool:
        """Whether ``name``'s live session has subscribed to ``uri`` upstream."""
        warm = self._warm.get(name)
        return warm is not None and warm.alive and uri in warm.subscribed

    async def forgotten(self, name: str, timeout: float) -> bool:
        """Ping ``name``'s open session: True when the server forgot it ("Session not found": an
        HTTP server restarted) or it broke, and it was dropped (the next open re-subscribes). A
        slow answer is not taken for a lost session: calls may be running on it."""
        warm = self._warm.get(name)
        if warm is None or not warm.alive or warm.session is None:
            return False
        try:
            await asyncio.wait_for(warm.session.send_ping(), timeout)
        except MCPError as exc:
            if not (session_forgotten(exc) or exc.code == CONNECTION_CLOSED):
                return False
        except TimeoutError:
            return False
        except Exception as exc:  # the transport itself broke
            log.warning("%s: ping failed: %r", name, exc)
        else:
            return False
        await self._discard(warm)
        return True

    async def open(self, server: ev.ServerRegistered) -> None:
        """Open ``server``'s session now if it has none (its live subscriptions with it).
        Raises: ServerUnavailable."""
        await self._session(server)

    async def listing(self, server: ev.ServerRegistered, method: str, *, timeout: float) -> list[dict[str, Any]]:
        """Everything ``server`` lists for ``method`` (``resources/list``, ``resources/templates/list``,
        ``prompts/list``), following its pages, as JSON. Raises as :meth:`call`."""
        request_type, result_type, member = _LISTS[method]
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            request = request_type(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
            page = await self._send(
                server,
                lambda session: session.send_request(request, result_type, request_read_timeout_seconds=timeout),  # noqa: B023
                timeout,
            )
            items.extend(i.model_dump(mode="json", by_alias=True, exclude_none=True) for i in getattr(page, member))
            cursor = page.next_cursor
            if not cursor:
                return items

    async def _send(
        self,
        server: ev.ServerRegistered,
        send: Callable[[ClientSession], Awaitable[T]],
        timeout: float,
        *,
        relay: Relay | None = None,
        on_session: Callable[[], None] | None = None,
        ask: Ask | None = None,
    ) -> T:
        try:
            return await self._send_once(server, send, timeout, relay=relay, on_session=on_session, ask=ask)
        except MCPError as exc:
            if not session_forgotten(exc):
                raise
        # The server no longer knows the session (an HTTP server restarted): it refused the request
        # before running it, so it is sent once more on a fresh session, whatever the call.
        log.warning("%s forgot its MCP session; starting a new one", server.name)
        return await self._send_once(server, send, timeout, relay=relay, on_session=on_session, ask=ask)

    async def _send_once(
        self,
        server: ev.ServerRegistered,
        send: Callable[[ClientSession], Awaitable[T]],
        timeout: float,
        *,
        relay: Relay | None,
        on_session: Callable[[], None] | None = None,
        ask: Ask | None = None,
    ) -> T:
        warm, session = await self._session(server)
        if on_session is not None:
            on_session()
        warm.in_flight += 1
        if relay is not None:
            warm.relays.append(relay)
        if ask is not None:
            warm.askers.append(ask)
        try:
            return await asyncio.wait_for(send(session), timeout)
        except MCPError as exc:
            if session_forgotten(exc):
                await self._discard(warm)
                raise
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
            if relay is not None:
                warm.relays.remove(relay)
            if ask is not None:
                warm.askers.remove(ask)

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
        # All at once: each close is bounded by CLOSE_TIMEOUT, and one after the other a few slow
        # ones (a stdio server that ignores its closed stdin, an HTTP server already gone: about 4 s
        # each) outlast the supervisor's grace, and the executor is killed instead of stopping.
        await asyncio.gather(*(warm.close() for warm in self._warm.values()))
        self._warm.clear()
