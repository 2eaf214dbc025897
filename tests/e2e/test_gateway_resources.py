"""Resources, prompts and completion through `writ gateway`, driven by the `mcp` SDK's own client
over stdio and streamable HTTP, against a real MCP server (tests/servers/conformance_everything.py,
streamable HTTP) registered on the session's plane: listings pass through with their server named
in `_meta`; each read, prompt, completion and subscription is a signed intent with its own Cedar
action and a receipt; a read a policy forbids is a clear JSON-RPC error and a denied receipt."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import mcp_types as types
import pytest
from click.testing import Result
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from test_gateway import (
    Notifications,
    Setup,
    authorized_client,
    gateway_token,
    operator_receipt,
    over_stdio,
    serving_http,
)
from typer.testing import CliRunner

from writ.cli import app
from writ.gateway.translate import WRIT_DID_NOT_COMPLETE
from writ.runtime.processes import free_port
from writ.runtime.supervisor import Plane

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

EVERYTHING = Path(__file__).resolve().parent.parent / "servers" / "conformance_everything.py"


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The conformance target server over streamable HTTP on a free loopback port; yields its URL."""
    port = free_port()
    with (tmp_path_factory.mktemp("everything") / "everything.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, str(EVERYTHING), str(port)], stdout=log, stderr=log)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def setup(plane: Plane, tmp_path_factory: pytest.TempPathFactory, everything: str) -> Setup:
    """One agent and the server registered for the module; a policy permitting calls, reads, prompts,
    completion and subscriptions on this server, except the binary resource, which a policy forbids."""
    runner = CliRunner()
    env = {"WRIT_DATA_DIR": str(plane.data_dir), "WRIT_NATS_URL": plane.nats_url, "COLUMNS": "200"}

    def writ(*args: str) -> Result:
        return runner.invoke(app, list(args), env=env)

    suffix = uuid.uuid4().hex[:8]
    agent, server = f"res-agent-{suffix}", f"everything-{suffix}"
    assert (registered := writ("agent", "register", agent, "--owner", "tests")).exit_code == 0, registered.output
    for _ in range(50):  # the server process may still be binding its port
        if (added := writ("server", "add", server, "--url", everything)).exit_code == 0:
            break
        time.sleep(0.1)
    assert added.exit_code == 0, added.output
    tmp = tmp_path_factory.mktemp("resources")
    policy = tmp / "resources.cedar"
    policy.write_text(
        f'@id("everything-reads")\npermit(principal, action in [Action::"call_tool", Action::"read_resource",'
        ' Action::"get_prompt", Action::"complete", Action::"subscribe_resource", Action::"unsubscribe_resource"],'
        f' resource) when {{ resource.server == "{server}" }};\n'
        '@id("no-binary")\nforbid(principal, action == Action::"read_resource", resource is Resource)'
        ' when { resource.uri == "test://static-binary" };\n'
    )
    assert (loaded := writ("policy", "load", str(policy))).exit_code == 0, loaded.output
    return Setup(agent, server, plane, tmp / "gateway.log")


def writ_meta(result: types.Result) -> dict[str, object]:
    assert result.meta is not None, result
    return dict(result.meta)


async def test_resources_prompts_and_completion_over_stdio(setup: Setup) -> None:
    async with over_stdio(setup) as session:
        capabilities = session.server_capabilities
        resources = (await session.list_resources()).resources
        templates = (await session.list_resource_templates()).resource_templates
        prompts = {p.name: p for p in (await session.list_prompts()).prompts}
        text = await session.read_resource("test://static-text")
        templated = await session.read_resource("test://template/123/data")
        prompt = await session.get_prompt("test_prompt_with_arguments", {"arg1": "one", "arg2": "two"})
        completion = await session.complete(
            types.PromptReference(type="ref/prompt", name="test_prompt_with_arguments"),
            {"name": "arg1", "value": "o"},
        )
        with warnings.catch_warnings():  # the SDK's newest revision replaces subscribe; MCP 2025-11-25 has it
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            subscribed = await session.subscribe_resource("test://watched-resource")

    assert capabilities is not None and capabilities.resources is not None and capabilities.prompts is not None
    assert capabilities.completions is not None
    # Listed as the server lists them (plain pass-through, no intent), its name under _meta.
    mine = {str(r.uri): r for r in resources if (r.meta or {}).get("writ/server") == setup.server}
    assert mine["test://static-text"].title == "Static Text Resource"
    assert any(t.uri_template == "test://template/{id}/data" for t in templates)
    assert prompts["test_prompt_with_arguments"].arguments is not None
    # Each read is an intent: the server's own answer, Writ's word in _meta, a verified receipt.
    [content] = text.contents
    assert isinstance(content, types.TextResourceContents)
    assert content.text == "This is the content of the static text resource."
    assert writ_meta(text)["writ/status"] == "succeeded"
    receipt = await operator_receipt(setup.plane, str(writ_meta(text)["writ/intent_id"]))
    assert (receipt.status, receipt.agent_id) == ("succeeded", setup.agent)
    assert (receipt.tool, receipt.operation) == (f"{setup.server}/test://static-text", "read_resource")
    assert '"123"' in str(templated.contents[0].model_dump())
    assert isinstance(prompt.messages[0].content, types.TextContent)
    assert prompt.messages[0].content.text == "Prompt with arguments: arg1='one', arg2='two'"
    assert completion.completion.values == []
    for result in (prompt, completion, subscribed):
        assert (await operator_receipt(setup.plane, str(writ_meta(result)["writ/intent_id"]))).status == "succeeded"


@pytest.fixture
def http_gateway(setup: Setup) -> Iterator[str]:
    with serving_http(setup) as url:
        yield url


async def test_a_read_a_policy_forbids_is_a_clear_error_with_a_receipt_over_http(
    setup: Setup, http_gateway: str
) -> None:
    async with (
        authorized_client(gateway_token(setup)) as http,
        streamable_http_client(http_gateway, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        with warnings.catch_warnings():  # deprecated in the SDK's newest revision, in MCP 2025-11-25
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await session.set_logging_level("info")  # the gateway's own: answered, not an intent
        with pytest.raises(MCPError) as refused:
            await session.read_resource("test://static-binary")
        with pytest.raises(MCPError) as unknown:
            await session.read_resource("test://nowhere")
        allowed = await session.read_resource("test://static-text")

    error = refused.value.error
    assert error.code == WRIT_DID_NOT_COMPLETE
    assert "denied at authorize (forbidden)" in error.message and "no-binary" in error.message
    assert isinstance(error.data, dict) and error.data["writ/status"] == "denied"
    receipt = await operator_receipt(setup.plane, str(error.data["writ/intent_id"]))
    assert (receipt.status, receipt.code, receipt.result) == ("denied", "forbidden", None)
    assert receipt.operation == "read_resource"
    assert unknown.value.error.code == -32002  # no server lists it: MCP's "resource not found", no intent
    assert writ_meta(allowed)["writ/status"] == "succeeded"


async def test_the_tools_own_progress_and_log_messages_reach_its_caller(setup: Setup) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    notifications = Notifications()
    async with over_stdio(setup, notifications=notifications) as session:
        stepped = await session.call_tool(setup.tool("test_tool_with_progress"), {}, progress_callback=on_progress)
        # MCP 2026-07-28 (this client's): a request opts in to the log messages of its own call.
        logged = await session.call_tool(
            setup.tool("test_tool_with_logging"), {}, meta={"io.modelcontextprotocol/logLevel": "info"}
        )
        assert not stepped.is_error and not logged.is_error, (stepped.content, logged.content)
        await notifications.wait_for(types.LoggingMessageNotification, 3)

    # Writ's stages (1-6), then the tool's own progress after them (6 + its own), only forward.
    assert [p for p, _t, _m in progress] == sorted({p for p, _t, _m in progress})
    assert (56.0, 106.0, "Completed step 50 of 100") in progress and progress[-1][0] == 106.0
    logs = [n.params for n in notifications.received if isinstance(n, types.LoggingMessageNotification)]
    assert [log.data for log in logs] == ["Tool execution started", "Tool processing data", "Tool execution completed"]
