"""An MCP server (stdio, the `mcp` SDK's low-level server) whose resources can be subscribed to.

Resources ``watch://PREFIX/a`` and ``watch://PREFIX/b`` (PREFIX from the environment). Tools:
``touch(uri)`` sends notifications/resources/updated for ``uri`` when its client subscribed to it;
``subscribed()`` says which URIs its client holds now (what the server itself keeps);
``add_resource(name, quiet)`` lists one more resource and sends notifications/resources/list_changed
(unless ``quiet``: then only a client that lists again can tell); ``add_prompt(name)`` offers one
more prompt and sends notifications/prompts/list_changed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.stdio import stdio_server

PREFIX = os.environ.get("PREFIX", "sub")
RESOURCES = [f"watch://{PREFIX}/a", f"watch://{PREFIX}/b"]
SUBSCRIBED: set[str] = set()
PROMPTS: list[str] = [f"{PREFIX}_hello"]
READ_ONLY = types.ToolAnnotations(read_only_hint=True, idempotent_hint=True)


def _schema(**properties: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": kind} for name, kind in properties.items()},
        "required": list(properties),
    }


async def list_tools(_ctx: Any, _params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(
        tools=[
            types.Tool(name=f"{PREFIX}_touch", description="Change a resource", input_schema=_schema(uri="string")),
            types.Tool(
                name=f"{PREFIX}_subscribed",
                description="The URIs subscribed",
                input_schema=_schema(),
                annotations=READ_ONLY,
            ),
            types.Tool(
                name=f"{PREFIX}_add_resource",
                description="List one more",
                input_schema=_schema(name="string", quiet="boolean"),
            ),
            types.Tool(
                name=f"{PREFIX}_add_prompt", description="Offer one more prompt", input_schema=_schema(name="string")
            ),
        ]
    )


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    said: Any
    if params.name == f"{PREFIX}_touch":
        uri = str(args["uri"])
        said = uri in SUBSCRIBED
        if said:
            await ctx.session.send_resource_updated(uri)
    elif params.name == f"{PREFIX}_subscribed":
        said = sorted(SUBSCRIBED)
    elif params.name == f"{PREFIX}_add_resource":
        RESOURCES.append(f"watch://{PREFIX}/{args['name']}")
        if not args.get("quiet"):
            await ctx.session.send_resource_list_changed()
        said = RESOURCES
    elif params.name == f"{PREFIX}_add_prompt":
        PROMPTS.append(f"{PREFIX}_{args['name']}")
        await ctx.session.send_prompt_list_changed()
        said = PROMPTS
    else:
        return types.CallToolResult(content=[types.TextContent(type="text", text="no such tool")], is_error=True)
    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(said))])


async def list_resources(_ctx: Any, _params: Any) -> types.ListResourcesResult:
    return types.ListResourcesResult(
        resources=[types.Resource(uri=uri, name=uri.rsplit("/", 1)[-1]) for uri in RESOURCES]
    )


async def list_prompts(_ctx: Any, _params: Any) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=[types.Prompt(name=name) for name in PROMPTS])


async def read_resource(_ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    return types.ReadResourceResult(contents=[types.TextResourceContents(uri=str(params.uri), text="content")])


async def subscribe(_ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
    SUBSCRIBED.add(str(params.uri))
    return types.EmptyResult()


async def unsubscribe(_ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    SUBSCRIBED.discard(str(params.uri))
    return types.EmptyResult()


async def main() -> None:
    server: Server[Any] = Server(
        "subscribable",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_list_prompts=list_prompts,
    )
    options = server.create_initialization_options(NotificationOptions(resources_changed=True, prompts_changed=True))
    async with stdio_server() as (read, write):
        await server.run(read, write, options)


if __name__ == "__main__":
    anyio.run(main)
