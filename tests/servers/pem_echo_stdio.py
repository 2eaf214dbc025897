"""A stdio MCP server that leaks a multi-line secret (a PEM block) in every shape but the plain one.

It reads ``PEM_KEY`` from its environment (Writ puts it there from a secret reference) and
echoes it raw, JSON-escaped (``\\n`` for each line break, ``\\u00e9`` for non-ASCII, and the
``ensure_ascii=False`` form), and line by line in reverse order, so no two lines of it are ever
next to each other; it prints the same to stderr, where the value spans lines. Writ must let none
of it out of the executor.

Usage: PEM_KEY=... python tests/servers/pem_echo_stdio.py
"""

from __future__ import annotations

import json
import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("pem-echo")
READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, destructive_hint=False)


def pem() -> str:
    return os.environ.get("PEM_KEY", "")


def escaped() -> str:
    return f"{json.dumps({'key': pem()})} {json.dumps({'key': pem()}, ensure_ascii=False)}"


def line_by_line() -> str:
    return "\n".join(f"line {n}: {line}" for n, line in reversed(list(enumerate(pem().splitlines()))))


@server.tool(annotations=READ_ONLY)
def echo_raw() -> str:
    """The key as it was given."""
    print(f"echo_raw: {pem()}", file=sys.stderr, flush=True)
    return f"the key is {pem()}"


@server.tool(annotations=READ_ONLY)
def echo_escaped() -> str:
    """The key inside JSON, as a string (escaped)."""
    print(f"echo_escaped: {escaped()}", file=sys.stderr, flush=True)
    return escaped()


@server.tool(annotations=READ_ONLY)
def echo_lines() -> dict[str, object]:
    """The key's lines, one by one, last first."""
    print(line_by_line(), file=sys.stderr, flush=True)
    return {"lines": pem().splitlines()[::-1], "text": line_by_line()}


if __name__ == "__main__":
    print(f"pem echo starting with PEM_KEY={pem()}", file=sys.stderr, flush=True)
    server.run("stdio")
