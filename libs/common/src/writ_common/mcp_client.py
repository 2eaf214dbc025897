"""Talking to tool servers through the official ``mcp`` SDK (stdio and streamable HTTP)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TextIO

from mcp import ClientSession, StdioServerParameters
from mcp.client.session import ElicitationFnT, LoggingFnT, MessageHandlerFnT, SamplingFnT
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import PaginatedRequestParams, Tool

from writ_common import events as ev
from writ_common.digest import tool_digest


@asynccontextmanager
async def open_session(
    server: ev.ServerRegistered,
    *,
    errlog: TextIO | None = None,
    on_message: MessageHandlerFnT | None = None,
    on_log: LoggingFnT | None = None,
    on_sampling: SamplingFnT | None = None,
    on_elicitation: ElicitationFnT | None = None,
) -> AsyncIterator[ClientSession]:
    """An initialized MCP client session to ``server``; closed (and a stdio process stopped) on exit.

    Args:
        server: the server's configuration (for the executor: with its secrets resolved).
        errlog: where a stdio server's stderr goes (a real file: it needs a descriptor); ours by default.
        on_message: receives the server's notifications (``notifications/tools/list_changed``...).
        on_log: receives the server's log messages (``notifications/message``).
        on_sampling: answers the server's ``sampling/createMessage`` (the session then declares
            the sampling capability); refused without it.
        on_elicitation: answers the server's ``elicitation/create`` (declaring elicitation); refused without it.
    """
    async with AsyncExitStack() as stack:
        if server.transport == "stdio":
            if not server.command:
                raise ValueError(f"stdio server {server.name!r} has no command")
            params = StdioServerParameters(command=server.command, args=list(server.args), env=dict(server.env) or None)
            read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog or sys.stderr))
        else:
            if not server.url:
                raise ValueError(f"http server {server.name!r} has no url")
            http = await stack.enter_async_context(create_mcp_http_client(headers=dict(server.headers) or None))
            if server.idempotency_header:
                http.event_hooks = {"request": [idempotency_header_hook(server.idempotency_header)]}
            read, write = await stack.enter_async_context(streamable_http_client(server.url, http_client=http))
        session = await stack.enter_async_context(
            ClientSession(
                read,
                write,
                message_handler=on_message,
                logging_callback=on_log,
                sampling_callback=on_sampling,
                elicitation_callback=on_elicitation,
            )
        )
        await session.initialize()
        yield session


IDEMPOTENCY_META_KEY = "writ/idempotency_key"


def idempotency_header_hook(header: str) -> Callable[[Any], Awaitable[None]]:
    """An HTTP request hook copying the call's idempotency key from the MCP ``_meta`` into ``header``:
    the transport sends from its own task, so the key travels inside the request itself."""

    async def hook(request: Any) -> None:
        if request.method != "POST":
            return
        try:
            message = json.loads(request.content)
        except (ValueError, TypeError):
            return
        params = message.get("params") if isinstance(message, dict) else None
        meta = params.get("_meta") if isinstance(params, dict) else None
        key = meta.get(IDEMPOTENCY_META_KEY) if isinstance(meta, dict) else None
        if isinstance(key, str) and key:
            request.headers[header] = key

    return hook


def annotations_of(tool: Tool) -> ev.ToolAnnotations:
    """MCP tool annotations, with the spec's defaults where a hint is absent."""
    hints = tool.annotations
    if hints is None:
        return ev.ToolAnnotations()
    return ev.ToolAnnotations(
        read_only=bool(hints.read_only_hint) if hints.read_only_hint is not None else False,
        destructive=bool(hints.destructive_hint) if hints.destructive_hint is not None else True,
        idempotent=bool(hints.idempotent_hint) if hints.idempotent_hint is not None else False,
        open_world=bool(hints.open_world_hint) if hints.open_world_hint is not None else True,
    )


# The members of a listed tool that tool_digest takes one by one; the rest go in as its ``extra``.
DIGESTED_MEMBERS = frozenset({"name", "description", "inputSchema", "outputSchema", "annotations"})


def definition_of(tool: Tool) -> ev.ToolDefinition:
    """A discovered tool as Writ pins it: its definition and the digest that is its version."""
    raw_annotations: dict[str, Any] | None = (
        tool.annotations.model_dump(mode="json", by_alias=True, exclude_none=True) if tool.annotations else None
    )
    input_schema = dict(tool.input_schema)
    output_schema = dict(tool.output_schema) if tool.output_schema else None
    listed: dict[str, Any] = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
    return ev.ToolDefinition(
        name=tool.name,
        description=tool.description,
        input_schema=input_schema,
        output_schema=output_schema,
        annotations=annotations_of(tool),
        tool_digest=tool_digest(
            name=tool.name,
            description=tool.description,
            input_schema=input_schema,
            output_schema=output_schema,
            annotations=raw_annotations,
            extra={k: v for k, v in listed.items() if k not in DIGESTED_MEMBERS},
        ),
        listed=listed,
    )


async def discover(
    server: ev.ServerRegistered,
    *,
    scrub: Callable[[Any], Any] | None = None,
    errlog: TextIO | None = None,
) -> list[ev.ToolDefinition]:
    """List a server's tools over MCP (following pagination).

    Args:
        server: the server's configuration.
        scrub: applied to each tool's JSON before it is pinned (the executor removes secret values).
        errlog: where a stdio server's stderr goes.
    """
    async with open_session(server, errlog=errlog) as session:
        found: list[ev.ToolDefinition] = []
        cursor: str | None = None
        while True:
            page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
            tools = page.tools
            if scrub is not None:
                dumped = [scrub(t.model_dump(mode="json", by_alias=True, exclude_none=True)) for t in tools]
                tools = [Tool.model_validate(t) for t in dumped]
            found.extend(definition_of(t) for t in tools)
            cursor = page.next_cursor
            if not cursor:
                return found


def root_cause(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups: anyio task groups wrap them."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
