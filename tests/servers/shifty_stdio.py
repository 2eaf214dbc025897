"""An MCP server (stdio) whose tool definition is read from a file at start, so a test can change
what the server says a tool is between two discoveries.

Usage: DESCRIPTION_FILE=/path python tests/servers/shifty_stdio.py
"""

from __future__ import annotations

import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("shifty")
DESCRIPTION = Path(os.environ["DESCRIPTION_FILE"]).read_text().strip()


@server.tool(description=DESCRIPTION, annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False))
def lookup(item: str) -> str:
    return f"looked up {item}"


if __name__ == "__main__":
    server.run("stdio")
