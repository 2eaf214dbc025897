"""An MCP stdio server whose one tool serves one call at a time, like a tool backed by a single
connection or a single-threaded worker: its latency grows with the calls queued at it, which is
what the executor's adaptive limit per route reacts to (``make bench-load``'s overload phase).

* ``work``  read-only: holds the server's one worker for ``seconds``, then answers.

Usage: python tests/servers/serial_stdio.py
"""

from __future__ import annotations

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("serial")
worker = anyio.Lock()


@server.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True))
async def work(seconds: float) -> str:
    """Hold the one worker for seconds."""
    async with worker:
        await anyio.sleep(seconds)
    return f"worked {seconds}s"


if __name__ == "__main__":
    server.run("stdio")
