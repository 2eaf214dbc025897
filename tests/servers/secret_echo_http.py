"""An MCP server over streamable HTTP that echoes the ``X-Api-Key`` header it was called with.

Usage: python tests/servers/secret_echo_http.py PORT
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("canary-http")


@server.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, destructive_hint=False))
def reveal_header(ctx: Context) -> str:
    """The X-Api-Key header this call arrived with."""
    request = ctx.request_context.request
    headers = getattr(request, "headers", None)
    key = str(headers.get("x-api-key", "")) if headers is not None else ""
    return f"called with X-Api-Key {key}" if key else "called without X-Api-Key"


if __name__ == "__main__":
    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
