"""The server side of the MCP conformance suite's contract (npm `@modelcontextprotocol/conformance`
server scenarios): the tools, resources, prompts, completion and logging its scenarios call, by the
names and with the answers they check. Written here on the `mcp` SDK's low-level server (the suite's
own reference server is not published on npm), so that `make conformance` can run the suite against
it directly and through `writ gateway --http`.

Usage: python tests/servers/conformance_everything.py PORT   (streamable HTTP, 127.0.0.1:PORT/mcp)
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

warnings.simplefilter("ignore")  # the SDK marks logging, sampling and elicitation deprecated in its newest revision

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
EMPTY: dict[str, Any] = {"type": "object", "properties": {}}


def _tool(name: str, description: str, schema: dict[str, Any] | None = None) -> types.Tool:
    return types.Tool(name=name, description=description, input_schema=schema or EMPTY)


def _string_arg(name: str, description: str) -> dict[str, Any]:
    return {"type": "object", "properties": {name: {"type": "string", "description": description}}, "required": [name]}


FORM_DEFAULTS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
    "required": [],
}
FORM_ENUMS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {
            "type": "string",
            "description": "Select one option",
            "enum": ["option1", "option2", "option3"],
        },
        "titledSingle": {
            "type": "string",
            "description": "Select one option with titles",
            "oneOf": [
                {"const": f"value{i}", "title": f"{t} Option"} for i, t in ((1, "First"), (2, "Second"), (3, "Third"))
            ],
        },
        "legacyEnum": {
            "type": "string",
            "description": "Select one option (legacy)",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "description": "Select multiple options",
            "minItems": 1,
            "maxItems": 3,
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "description": "Select multiple options with titles",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "anyOf": [
                    {"const": f"value{i}", "title": f"{t} Choice"}
                    for i, t in ((1, "First"), (2, "Second"), (3, "Third"))
                ]
            },
        },
    },
    "required": [],
}
SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}

TOOLS = [
    _tool("test_simple_text", "Tests simple text content response"),
    _tool("test_image_content", "Tests image content response"),
    _tool("test_audio_content", "Tests audio content response"),
    _tool("test_embedded_resource", "Tests embedded resource content response"),
    _tool("test_multiple_content_types", "Tests response with multiple content types (text, image, resource)"),
    _tool("test_tool_with_logging", "Tests tool that emits log messages during execution"),
    _tool("test_tool_with_progress", "Tests tool that reports progress notifications"),
    _tool("test_error_handling", "Tests error response handling"),
    _tool("test_reconnection", "Tests SSE stream disconnection and client reconnection (SEP-1699)"),
    _tool(
        "test_sampling",
        "Tests server-initiated sampling (LLM completion request)",
        _string_arg("prompt", "The prompt to send to the LLM"),
    ),
    _tool(
        "test_elicitation",
        "Tests server-initiated elicitation (user input request)",
        _string_arg("message", "The message to show the user"),
    ),
    _tool("test_elicitation_sep1034_defaults", "Tests elicitation with default values per SEP-1034"),
    _tool("test_elicitation_sep1330_enums", "Tests elicitation with enum schema improvements per SEP-1330"),
    _tool(
        "json_schema_2020_12_tool",
        "Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)",
        SCHEMA_2020_12,
    ),
]


def _resource(name: str, title: str, description: str, mime_type: str) -> types.Resource:
    return types.Resource(uri=f"test://{name}", name=name, title=title, description=description, mime_type=mime_type)


RESOURCES = [
    _resource("static-text", "Static Text Resource", "A static text resource for testing", "text/plain"),
    _resource("static-binary", "Static Binary Resource", "A static binary resource (image) for testing", "image/png"),
    _resource("watched-resource", "Watched Resource", "A resource that can be subscribed to", "text/plain"),
]
TEMPLATES = [
    types.ResourceTemplate(
        uri_template="test://template/{id}/data",
        name="template",
        title="Resource Template",
        description="A resource template with parameter substitution",
        mime_type="application/json",
    ),
]
PROMPTS = [
    types.Prompt(
        name="test_simple_prompt", title="Simple Test Prompt", description="A simple prompt without arguments"
    ),
    types.Prompt(
        name="test_prompt_with_arguments",
        title="Prompt With Arguments",
        description="A prompt with required arguments",
        arguments=[
            types.PromptArgument(name="arg1", description="First test argument", required=True),
            types.PromptArgument(name="arg2", description="Second test argument", required=True),
        ],
    ),
    types.Prompt(
        name="test_prompt_with_embedded_resource",
        title="Prompt With Embedded Resource",
        description="A prompt that includes an embedded resource",
        arguments=[types.PromptArgument(name="resourceUri", description="URI of the resource to embed", required=True)],
    ),
    types.Prompt(
        name="test_prompt_with_image", title="Prompt With Image", description="A prompt that includes image content"
    ),
]


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _result(*content: Any) -> types.CallToolResult:
    return types.CallToolResult(content=list(content))


async def list_tools(_ctx: Any, _params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    name = params.name
    image = types.ImageContent(type="image", data=PNG, mime_type="image/png")
    if name == "test_simple_text":
        return _result(_text("This is a simple text response for testing."))
    if name == "test_image_content":
        return _result(image)
    if name == "test_audio_content":
        return _result(types.AudioContent(type="audio", data=WAV, mime_type="audio/wav"))
    if name == "test_embedded_resource":
        embedded = types.TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
        )
        return _result(types.EmbeddedResource(type="resource", resource=embedded))
    if name == "test_multiple_content_types":
        mixed = types.TextResourceContents(
            uri="test://mixed-content-resource",
            mime_type="application/json",
            text=json.dumps({"test": "data", "value": 123}),
        )
        return _result(
            _text("Multiple content types test:"), image, types.EmbeddedResource(type="resource", resource=mixed)
        )
    if name == "test_tool_with_logging":
        for line in ("Tool execution started", "Tool processing data", "Tool execution completed"):
            await ctx.session.send_log_message("info", line, related_request_id=ctx.request_id)
            await anyio.sleep(0.05)
        return _result(_text("Tool with logging executed successfully"))
    if name == "test_tool_with_progress":
        for step in (0, 50, 100):
            await ctx.session.report_progress(float(step), 100.0, f"Completed step {step} of 100")
            await anyio.sleep(0.05)
        token = (ctx.params or {}).get("_meta", {}).get("progressToken", 0)
        return _result(_text(str(token)))
    if name == "test_error_handling":
        return types.CallToolResult(
            content=[_text("This tool intentionally returns an error for testing")], is_error=True
        )
    if name == "test_reconnection":  # answered on the same stream: this server keeps no event store to resume from
        await anyio.sleep(0.1)
        return _result(_text("Reconnection test completed successfully."))
    if name == "test_sampling":
        try:
            message = types.SamplingMessage(role="user", content=_text(str(args.get("prompt", ""))))
            sampled = await ctx.session.create_message([message], max_tokens=100, related_request_id=ctx.request_id)
        except MCPError as exc:
            return _result(_text(f"Sampling not supported or error: {exc}"))
        content = sampled.content
        said = content.text if isinstance(content, types.TextContent) else "No response"
        return _result(_text(f"LLM response: {said}"))
    if name in ("test_elicitation", "test_elicitation_sep1034_defaults", "test_elicitation_sep1330_enums"):
        if name == "test_elicitation":
            message, schema, says = (
                str(args.get("message", "")),
                _string_arg("response", "User's response"),
                "User response",
            )
        elif name == "test_elicitation_sep1034_defaults":
            message, schema, says = (
                "Please review and update the form fields with defaults",
                FORM_DEFAULTS,
                "Elicitation completed",
            )
        else:
            message, schema, says = "Please select options from the enum fields", FORM_ENUMS, "Elicitation completed"
        try:
            answer = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)  # type: ignore[arg-type]
        except MCPError as exc:
            return _result(_text(f"Elicitation not supported or error: {exc}"))
        return _result(_text(f"{says}: action={answer.action}, content={json.dumps(answer.content or {})}"))
    if name == "json_schema_2020_12_tool":
        return _result(_text(f"JSON Schema 2020-12 tool called with: {json.dumps(args)}"))
    raise MCPError(types.INVALID_PARAMS, f"Tool {name} not found")


async def list_resources(_ctx: Any, _params: Any) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=RESOURCES)


async def list_templates(_ctx: Any, _params: Any) -> types.ListResourceTemplatesResult:
    return types.ListResourceTemplatesResult(resource_templates=TEMPLATES)


async def read_resource(_ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    uri = str(params.uri)
    contents: types.TextResourceContents | types.BlobResourceContents
    if uri == "test://static-text":
        contents = types.TextResourceContents(
            uri=uri, mime_type="text/plain", text="This is the content of the static text resource."
        )
    elif uri == "test://static-binary":
        contents = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG)
    elif uri == "test://watched-resource":
        contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text="Watched resource content")
    elif uri.startswith("test://template/") and uri.endswith("/data"):
        rid = uri.removeprefix("test://template/").removesuffix("/data")
        text = json.dumps({"id": rid, "templateTest": True, "data": f"Data for ID: {rid}"})
        contents = types.TextResourceContents(uri=uri, mime_type="application/json", text=text)
    else:
        raise MCPError(-32002, f"Resource {uri} not found", {"uri": uri})
    return types.ReadResourceResult(contents=[contents])


async def subscribe(_ctx: Any, _params: Any) -> types.EmptyResult:
    return types.EmptyResult()


async def list_prompts(_ctx: Any, _params: Any) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=PROMPTS)


async def get_prompt(_ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    args = params.arguments or {}
    user = "user"
    if params.name == "test_simple_prompt":
        messages = [types.PromptMessage(role=user, content=_text("This is a simple prompt for testing."))]
    elif params.name == "test_prompt_with_arguments":
        said = f"Prompt with arguments: arg1='{args.get('arg1')}', arg2='{args.get('arg2')}'"
        messages = [types.PromptMessage(role=user, content=_text(said))]
    elif params.name == "test_prompt_with_embedded_resource":
        embedded = types.TextResourceContents(
            uri=args.get("resourceUri", ""), mime_type="text/plain", text="Embedded resource content for testing."
        )
        messages = [
            types.PromptMessage(role=user, content=types.EmbeddedResource(type="resource", resource=embedded)),
            types.PromptMessage(role=user, content=_text("Please process the embedded resource above.")),
        ]
    elif params.name == "test_prompt_with_image":
        messages = [
            types.PromptMessage(role=user, content=types.ImageContent(type="image", data=PNG, mime_type="image/png")),
            types.PromptMessage(role=user, content=_text("Please analyze the image above.")),
        ]
    else:
        raise MCPError(types.INVALID_PARAMS, f"Prompt {params.name} not found")
    return types.GetPromptResult(messages=messages)


async def complete(_ctx: Any, _params: types.CompleteRequestParams) -> types.CompleteResult:
    return types.CompleteResult(completion=types.Completion(values=[], total=0, has_more=False))


async def set_level(_ctx: Any, _params: types.SetLevelRequestParams) -> types.EmptyResult:
    return types.EmptyResult()


def server() -> Server[Any]:
    return Server(
        "mcp-conformance-test-server",
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=subscribe,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
        on_set_logging_level=set_level,
    )


if __name__ == "__main__":
    import uvicorn

    app = server().streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
