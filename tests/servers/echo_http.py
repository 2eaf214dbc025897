"""A tiny MCP server over streamable HTTP, for testing Writ's HTTP transport.

Usage: python tests/servers/echo_http.py PORT
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("echo")


@server.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, destructive_hint=False))
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, destructive_hint=False))
def idempotency_header(ctx: Context) -> str:
    """The Idempotency-Key header this call arrived with (empty if none)."""
    request = ctx.request_context.request
    headers = getattr(request, "headers", None)
    return str(headers.get("idempotency-key", "")) if headers is not None else ""


if __name__ == "__main__":
    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
