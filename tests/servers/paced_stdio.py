"""A small MCP server over stdio whose two read-only tools take a set time, for the executor's
concurrency loop: ``parallel`` runs any number of calls side by side (a higher limit helps);
``thrashing`` takes ``seconds`` times the square of the calls in flight, as a server that spends
itself on contention does (a higher limit makes every call slower and fewer go through).

Usage: python tests/servers/paced_stdio.py
"""

from __future__ import annotations

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("paced")
in_flight = [0]  # calls to `thrashing` running now


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
async def parallel(seconds: float) -> str:
    await anyio.sleep(seconds)
    return "done"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
async def thrashing(seconds: float) -> str:
    in_flight[0] += 1
    try:
        await anyio.sleep(seconds * in_flight[0] ** 2)
    finally:
        in_flight[0] -= 1
    return "done"


if __name__ == "__main__":
    server.run("stdio")
