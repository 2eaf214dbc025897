"""An MCP server (stdio) whose tools exercise what a gateway must pass through unchanged: a listing
with a title, icons, _meta, an outputSchema and only some annotations; a tool that answers with its
own error result; one that refuses with a JSON-RPC error; a slow one; two that ask the calling
client for input (sampling, elicitation) and fail with a JSON-RPC error when it cannot answer. Written on the SDK's low-level
server so the listing is exactly what it says.

Tool names start with TOOL_PREFIX (from the environment), so each test's tools are unique across
the servers a shared plane has registered.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

warnings.simplefilter("ignore")  # the SDK marks sampling and elicitation deprecated in its newest revision
PREFIX = os.environ.get("TOOL_PREFIX", "fx")
SHAPED, FAILS, REFUSES, SLOW, SAMPLES, ELICITS = (
    f"{PREFIX}_{n}" for n in ("shaped", "fails", "refuses", "slow", "samples", "elicits")
)
READ_ONLY = types.ToolAnnotations(read_only_hint=True)
REFUSAL_CODE = -32602

TOOLS = [
    types.Tool(
        name=SHAPED,
        title="A shaped tool",
        description="Answers with a number, in structured content too.",
        input_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
        output_schema={"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
        icons=[types.Icon(src="data:image/png;base64,iVBORw0KGgo=", mime_type="image/png")],
        annotations=READ_ONLY,
        meta={"example.com/shape": "kept"},
    ),
    types.Tool(
        name=FAILS,
        description="Always fails, in its own words.",
        input_schema={"type": "object"},
        annotations=READ_ONLY,
    ),
    types.Tool(
        name=REFUSES,
        description="Refuses with a JSON-RPC error.",
        input_schema={"type": "object"},
        annotations=READ_ONLY,
    ),
    types.Tool(
        name=SAMPLES,
        description="Asks the client's LLM to complete `prompt`, and says what it answered.",
        input_schema={"type": "object", "properties": {"prompt": {"type": "string"}}},
        annotations=READ_ONLY,
    ),
    types.Tool(
        name=ELICITS,
        description="Asks the client's user for a name, and says what they did.",
        input_schema={"type": "object"},
        annotations=READ_ONLY,
    ),
    types.Tool(
        name=SLOW,
        description="Sleeps for `seconds`, then says so.",
        input_schema={"type": "object", "properties": {"seconds": {"type": "number"}}},
        annotations=READ_ONLY,
    ),
]


async def list_tools(_ctx: Any, _params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    arguments = params.arguments or {}
    if params.name == SHAPED:
        n = int(arguments.get("n", 1))
        return types.CallToolResult(content=[types.TextContent(text=str(n))], structured_content={"n": n})
    if params.name == FAILS:
        return types.CallToolResult(content=[types.TextContent(text="it broke, in the tool's words")], is_error=True)
    if params.name == REFUSES:
        raise MCPError(REFUSAL_CODE, "no such thing here", {"why": "a test server refuses"})
    if params.name in (SAMPLES, ELICITS):
        return await asking(ctx, params.name, arguments)
    if params.name == SLOW:
        seconds = float(arguments.get("seconds", 1))
        await anyio.sleep(seconds)
        return types.CallToolResult(content=[types.TextContent(text=f"slept {seconds:g}s")])
    raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r}")


async def asking(ctx: ServerRequestContext[Any], name: str, arguments: dict[str, Any]) -> types.CallToolResult:
    try:
        if name == SAMPLES:
            message = types.SamplingMessage(role="user", content=types.TextContent(text=str(arguments.get("prompt"))))
            sampled = await ctx.session.create_message([message], max_tokens=50, related_request_id=ctx.request_id)
            said = sampled.content.text if isinstance(sampled.content, types.TextContent) else "?"
            return types.CallToolResult(content=[types.TextContent(text=f"{sampled.model} said: {said}")])
        schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
        answer = await ctx.session.elicit_form("Your name?", schema, related_request_id=ctx.request_id)
        return types.CallToolResult(content=[types.TextContent(text=f"{answer.action}: {answer.content}")])
    except MCPError as exc:  # no answer: the call fails, in the client's (or Writ's) words
        raise MCPError(exc.code, f"{name} got no answer: {exc.message}") from exc


async def main() -> None:
    server = Server("fidelity", version="1.0.0", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
