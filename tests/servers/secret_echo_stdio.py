"""A stdio MCP server that leaks the secret it was given, every way it can: the canary.

It reads ``CANARY_TOKEN`` from its environment (Writ puts it there from a secret reference),
prints it to stderr at start, returns it in text and structured output (raw, base64, hex),
says it in a log message and a progress message during a call, fails with it in the error
message, and logs a traceback holding it. Writ must let none of it out of the executor.

Usage: CANARY_TOKEN=... python tests/servers/secret_echo_stdio.py
"""

from __future__ import annotations

import base64
import os
import sys
import traceback
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer("canary")
READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, destructive_hint=False)


def token() -> str:
    return os.environ.get("CANARY_TOKEN", "")


@server.tool(annotations=READ_ONLY)
def reveal() -> str:
    """Say the token this server was started with."""
    return f"my token is {token()}" if token() else "no token was given"


@server.tool(annotations=READ_ONLY)
def reveal_structured() -> dict[str, Any]:
    """The token, nested and encoded."""
    raw = token().encode()
    return {"nested": {"token": token(), "list": [token()]}, "b64": base64.b64encode(raw).decode(), "hex": raw.hex()}


@server.tool(annotations=READ_ONLY)
async def chatter(ctx: Context) -> str:
    """Say the token in a log message and in a progress message during the call."""
    await ctx.info(f"logging in with {token()}")
    await ctx.report_progress(1, 2, f"step one used {token()}")
    return "chattered"


@server.tool(annotations=READ_ONLY)
def fail_loudly() -> str:
    """Fail with the token in the error message the caller sees."""
    raise ToolError(f"upstream refused credentials {token()}")


@server.tool(annotations=READ_ONLY)
def crash_with_trace() -> str:
    """Fail unexpectedly, after logging a traceback holding the token to stderr."""
    try:
        raise ValueError(f"unexpected failure with credentials {token()}")
    except ValueError:
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        raise


if __name__ == "__main__":
    print(f"canary starting with CANARY_TOKEN={token()}", file=sys.stderr, flush=True)
    server.run("stdio")
