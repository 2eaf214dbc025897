"""`writ gateway` driven by the `mcp` SDK's own client, as any MCP client would: over stdio (the
client launches the gateway) and streamable HTTP, against the session's plane."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.session import ClientRequestContext, ElicitationFnT, SamplingFnT
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from plane_reads import as_operator, stored_on

from cli_runner import INTENT_ID, TIME_SERVER, Writ, cli
from waiting import wait_until
from writ.cli.base import default_policy
from writ.gateway.auth import gateway_token_path
from writ.runtime.supervisor import Plane
from writ.sdk import fetch_receipt
from writ_common import commands, subjects
from writ_common.bus import read_history
from writ_common.events import ExecutionInputAnswered, ExecutionInputRequested, Receipt
from writ_common.ids import derive_intent_id
from writ_common.receipts import verify_receipt

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

BIN = Path(sys.executable).parent
MORPHING_SERVER = Path(__file__).resolve().parent.parent / "servers" / "morphing_stdio.py"
FIDELITY_SERVER = Path(__file__).resolve().parent.parent / "servers" / "fidelity_stdio.py"
KEY = "writ/idempotency_key"


@dataclass(frozen=True)
class Setup:
    agent: str
    server: str
    plane: Plane
    log: Path

    def tool(self, name: str) -> str:
        return f"{self.server}__{name}"

    @property
    def env(self) -> dict[str, str]:
        return {"WRIT_DATA_DIR": str(self.plane.data_dir), "WRIT_NATS_URL": self.plane.nats_url}


@pytest.fixture(scope="module")
def setup(plane: Plane, tmp_path_factory: pytest.TempPathFactory, time_server: str) -> Setup:
    """One agent (registered with the CLI), the session's mcp-server-time, and the default policy plus
    a forbid on this server's convert_time, for the module: its tests only read them (a test that
    changes a server adds its own)."""
    writ = cli(plane)
    folder = tmp_path_factory.mktemp("gateway")
    agent, server = f"gw-agent-{uuid.uuid4().hex[:8]}", time_server
    assert (registered := writ("agent", "register", agent, "--owner", "tests")).exit_code == 0, registered.output
    policy = folder / "gateway.cedar"
    policy.write_text(
        default_policy()[0] + '\n@id("gateway-no-convert")\nforbid(principal, action == Action::"call_tool", resource)'
        f' when {{ resource.server == "{server}" && resource.name == "convert_time" }};\n'
    )
    assert (loaded := writ("policy", "load", str(policy))).exit_code == 0, loaded.output
    return Setup(agent, server, plane, folder / "gateway.log")


class Notifications:
    """What the gateway sent a client unasked, in order (a ClientSession's message handler)."""

    def __init__(self) -> None:
        self.received: list[types.ServerNotification] = []
        self._arrived = asyncio.Event()

    async def __call__(self, message: types.ServerNotification | Exception) -> None:
        if not isinstance(message, Exception):
            self.received.append(message)
            self._arrived.set()

    async def wait_for(self, kind: type[types.ServerNotification], count: int, timeout: float = 15.0) -> None:
        async def enough() -> None:
            while sum(isinstance(n, kind) for n in self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(enough(), timeout)


@asynccontextmanager
async def over_stdio(
    setup: Setup,
    *options: str,
    notifications: Notifications | None = None,
    sampling: SamplingFnT | None = None,
    elicitation: ElicitationFnT | None = None,
) -> AsyncIterator[ClientSession]:
    """An MCP client session with `writ gateway --as AGENT`, launched by the client as its command
    (answering a server's sampling and elicitation requests when given the callbacks)."""
    params = StdioServerParameters(
        command=str(BIN / "writ"), args=["gateway", "--as", setup.agent, *options], env=setup.env
    )
    with setup.log.open("a") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(
                read, write, message_handler=notifications, sampling_callback=sampling, elicitation_callback=elicitation
            ) as session,
        ):
            await session.initialize()
            yield session


async def operator_receipt(plane: Plane, intent_id: str) -> Receipt:
    """The intent's receipt, verified against the ledger's key."""
    async with as_operator(plane) as nc:
        receipt = await fetch_receipt(nc, intent_id)
        assert receipt is not None, f"no receipt for {intent_id}"
        verify_receipt(receipt, str((await commands.call(nc, "ledger", "public_key", {}))["public_key"]))
        return receipt


async def run_cli(writ: Writ, *args: str) -> None:
    """`writ ARGS...` from an async test (the CLI runs its own event loop), which must succeed."""
    result = await asyncio.to_thread(writ, *args)
    assert result.exit_code == 0, result.output


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def listed_by_writ_name(session: ClientSession) -> dict[str, types.Tool]:
    """The gateway's listing by the Writ tool each stands for (its _meta says)."""
    return {str((t.meta or {}).get("writ/tool")): t for t in (await session.list_tools()).tools}


def intent_of(result: types.CallToolResult) -> str:
    assert result.meta is not None, result
    return str(result.meta["writ/intent_id"])


async def test_tools_list_shows_the_time_servers_tools_with_their_schemas(setup: Setup) -> None:
    async with over_stdio(setup) as session:
        listed = await listed_by_writ_name(session)

    tool = listed[f"{setup.server}/get_current_time"]
    assert f"{setup.server}/convert_time" in listed
    # Other tests register mcp-server-time too: a name two servers offer is listed as SERVER.TOOL.
    assert tool.name in ("get_current_time", setup.tool("get_current_time"))
    assert tool.input_schema["type"] == "object"
    assert "timezone" in tool.input_schema["properties"] and tool.input_schema["required"] == ["timezone"]
    assert tool.description and "time" in tool.description.lower()
    assert tool.annotations is not None and tool.annotations.read_only_hint is True
    assert all("/" not in t.name for t in listed.values())


@pytest.fixture(scope="module")
def fidelity(plane: Plane) -> str:
    """A fidelity_stdio server whose tool names (PREFIX_shaped...) no other server offers."""
    prefix = f"fx{uuid.uuid4().hex[:8]}"
    added = cli(plane)(
        "server", "add", prefix, "--env", f"TOOL_PREFIX={prefix}", "--", sys.executable, str(FIDELITY_SERVER)
    )
    assert added.exit_code == 0, added.output
    return prefix


async def test_the_listing_is_the_servers_own_and_both_spellings_call_the_tool(setup: Setup, fidelity: str) -> None:
    async with over_stdio(setup) as session:
        listed = {t.name: t for t in (await session.list_tools()).tools}
        bare = await session.call_tool(f"{fidelity}_shaped", {"n": 7})
        prefixed = await session.call_tool(f"{fidelity}__{fidelity}_shaped", {"n": 8})
        dotted = await session.call_tool(f"{fidelity}.{fidelity}_shaped", {"n": 9})  # MCP's dotted spelling too

    shaped = listed[f"{fidelity}_shaped"]  # unique across servers: the server's own name
    assert shaped.title == "A shaped tool"
    assert shaped.annotations == types.ToolAnnotations(read_only_hint=True)  # as given, no defaults filled in
    assert shaped.output_schema is not None and shaped.output_schema["required"] == ["n"]
    assert shaped.icons is not None and shaped.icons[0].mime_type == "image/png"
    assert shaped.meta == {"example.com/shape": "kept", "writ/tool": f"{fidelity}/{fidelity}_shaped"}
    assert not bare.is_error and bare.structured_content == {"n": 7}, text_of(bare)
    assert not prefixed.is_error and prefixed.structured_content == {"n": 8}, text_of(prefixed)
    assert not dotted.is_error and dotted.structured_content == {"n": 9}, text_of(dotted)


async def test_a_call_answers_with_the_tools_result_and_a_signed_receipt_in_the_agents_name(setup: Setup) -> None:
    async with over_stdio(setup) as session:
        result = await session.call_tool(setup.tool("get_current_time"), {"timezone": "Europe/Paris"})

    assert not result.is_error, text_of(result)
    assert result.structured_content is not None and result.structured_content["timezone"] == "Europe/Paris"
    receipt = await operator_receipt(setup.plane, intent_of(result))
    assert receipt.status == "succeeded" and receipt.agent_id == setup.agent
    assert (receipt.server, receipt.tool) == (
        setup.server,
        f"{setup.server}/get_current_time",
    )  # SERVER__TOOL -> SERVER/TOOL
    recorded = types.CallToolResult.model_validate(receipt.result)  # what the tool returned, as the ledger kept it
    assert result.content == recorded.content and result.structured_content == recorded.structured_content


async def inputs_recorded(plane: Plane, agent: str, intent_id: str) -> list[Any]:
    """What the intent's history says was asked of the client during its call, and answered."""
    async with as_operator(plane) as nc:
        history = await read_history(nc, agent, intent_id)
    kinds = (ExecutionInputRequested, ExecutionInputAnswered)
    return [e.payload for e in history.events if isinstance(e.payload, kinds)]


async def test_a_servers_sampling_and_elicitation_are_answered_by_the_client_and_recorded(
    setup: Setup, fidelity: str
) -> None:
    asked: list[types.CreateMessageRequestParams] = []

    async def sampling(
        _context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        asked.append(params)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(text="forty-two"), model="test-llm"
        )

    async def elicitation(_context: ClientRequestContext, _params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async with over_stdio(setup, sampling=sampling, elicitation=elicitation) as session:
        sampled = await session.call_tool(f"{fidelity}_samples", {"prompt": "the answer?"})
        elicited = await session.call_tool(f"{fidelity}_elicits", {})

    assert not sampled.is_error and text_of(sampled) == "test-llm said: forty-two", text_of(sampled)
    assert not elicited.is_error and text_of(elicited) == "accept: {'name': 'Ada'}", text_of(elicited)
    assert isinstance(asked[0].messages[0].content, types.TextContent)
    assert asked[0].messages[0].content.text == "the answer?"  # the server's request, as it asked
    requested, answered = await inputs_recorded(setup.plane, setup.agent, intent_of(sampled))
    assert isinstance(requested, ExecutionInputRequested) and (requested.kind, requested.ask) == ("sampling", 1)
    assert requested.request is not None and requested.request["messages"][0]["content"]["text"] == "the answer?"
    assert isinstance(answered, ExecutionInputAnswered) and answered.outcome == "answered"
    assert (answered.by, answered.via) == (setup.agent, "writ-gateway/stdio")
    assert answered.answer is not None and answered.answer["model"] == "test-llm"
    [_, said] = await inputs_recorded(setup.plane, setup.agent, intent_of(elicited))
    assert isinstance(said, ExecutionInputAnswered) and (said.kind, said.outcome) == ("elicitation", "answered")
    receipt = await operator_receipt(setup.plane, intent_of(sampled))
    assert receipt.status == "succeeded"


async def test_a_client_that_cannot_answer_a_sampling_request_fails_the_call(setup: Setup, fidelity: str) -> None:
    key = f"no-sampling-{uuid.uuid4().hex[:8]}"
    async with over_stdio(setup) as session:  # no sampling callback: the client declares no sampling
        with pytest.raises(MCPError) as refused:
            await session.call_tool(f"{fidelity}_samples", {"prompt": "hello?"}, meta={KEY: key})

    assert "the MCP client does not support sampling" in refused.value.error.message
    intent_id = derive_intent_id(setup.agent, key)
    requested, answered = await inputs_recorded(setup.plane, setup.agent, intent_id)
    assert isinstance(requested, ExecutionInputRequested) and requested.kind == "sampling"
    assert isinstance(answered, ExecutionInputAnswered)
    assert (answered.outcome, answered.code, answered.by) == ("failed", "client_error", setup.agent)
    assert (await operator_receipt(setup.plane, intent_id)).status == "failed"  # never a false success


async def test_a_call_with_no_client_listening_fails_at_once_rather_than_waiting(setup: Setup, fidelity: str) -> None:
    """Submitted with the CLI: no gateway listens for the intent's requests for input, and the
    executor hears so from NATS at once (no responders), not after the call's timeout."""
    started = time.monotonic()
    submitted = await asyncio.to_thread(
        cli(setup.plane),
        "intent", "submit", f"{fidelity}/{fidelity}_samples", "--args", '{"prompt": "anyone?"}',
        "--as", setup.agent, "--wait",
    )  # fmt: skip
    found = INTENT_ID.search(submitted.stdout)
    assert found, submitted.output
    assert time.monotonic() - started < 20, "waited for an answer nobody could give"
    requested, answered = await inputs_recorded(setup.plane, setup.agent, found.group(1))
    assert isinstance(requested, ExecutionInputRequested) and requested.kind == "sampling"
    assert isinstance(answered, ExecutionInputAnswered) and (answered.outcome, answered.code) == ("failed", "no_client")
    assert (await operator_receipt(setup.plane, found.group(1))).status == "failed"


async def test_invalid_arguments_come_back_as_an_error_with_writs_rejection_reason(setup: Setup) -> None:
    async with over_stdio(setup) as session:
        result = await session.call_tool(setup.tool("get_current_time"), {"timezone": 42})

    assert result.is_error
    receipt = await operator_receipt(setup.plane, intent_of(result))
    assert (receipt.status, receipt.code) == ("rejected", "invalid_arguments")
    text = text_of(result)
    assert "rejected" in text and "invalid_arguments" in text and receipt.intent_id in text
    assert receipt.reason.removeprefix("invalid_arguments: ") in text


async def test_a_call_the_policy_forbids_comes_back_as_an_error_with_the_denial(setup: Setup) -> None:
    arguments = {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
    async with over_stdio(setup) as session:
        result = await session.call_tool(setup.tool("convert_time"), arguments)

    assert result.is_error
    receipt = await operator_receipt(setup.plane, intent_of(result))
    assert (receipt.status, receipt.code) == ("denied", "forbidden")
    assert "gateway-no-convert" in receipt.policy_ids
    text = text_of(result)
    assert "denied" in text and "forbidden" in text and receipt.intent_id in text
    assert receipt.reason.removeprefix("forbidden: ") in text


async def test_bad_input_is_answered_as_an_error_and_the_gateway_keeps_serving(setup: Setup) -> None:
    get_time = setup.tool("get_current_time")
    async with over_stdio(setup) as session:
        unknown = await session.call_tool(f"{setup.server}.no_such_tool", {})
        bad_key = await session.call_tool(get_time, {"timezone": "UTC"}, meta={KEY: 42})
        unsignable = await session.call_tool(get_time, {"timezone": 2**60})  # beyond canonical JSON's integers
        still = await session.call_tool(get_time, {"timezone": "UTC"})

    assert unknown.is_error and "rejected" in text_of(unknown) and "unknown_tool" in text_of(unknown)
    assert bad_key.is_error and "invalid_idempotency_key" in text_of(bad_key)
    assert unsignable.is_error and "invalid_arguments" in text_of(unsignable)
    assert not still.is_error, text_of(still)


async def test_a_tools_own_error_and_a_servers_json_rpc_error_pass_through(setup: Setup, fidelity: str) -> None:
    async with over_stdio(setup) as session:
        failed = await session.call_tool(f"{fidelity}_fails", {})
        with pytest.raises(MCPError) as refused:
            await session.call_tool(f"{fidelity}_refuses", {})
        still = await session.call_tool(f"{fidelity}_shaped", {"n": 1})

    assert failed.is_error and failed.content == [types.TextContent(text="it broke, in the tool's words")]
    receipt = await operator_receipt(setup.plane, intent_of(failed))
    assert (receipt.status, receipt.code) == ("failed", "tool_error") and failed.meta is not None
    assert (failed.meta["writ/status"], failed.meta["writ/stage"]) == ("failed", "execute")
    assert (refused.value.code, refused.value.message) == (-32602, "no such thing here")
    assert refused.value.data == {"why": "a test server refuses"}
    assert not still.is_error  # the session goes on


async def test_progress_reports_writs_stages_and_a_cancelled_call_ends_cancelled_in_writ(
    setup: Setup, fidelity: str
) -> None:
    stages: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, _total: float | None, message: str | None) -> None:
        stages.append((progress, message))

    key = f"cancel-{uuid.uuid4().hex}"
    slow = f"{fidelity}_slow"
    async with over_stdio(setup) as session:
        done = await session.call_tool(slow, {"seconds": 0.2}, progress_callback=on_progress)
        with anyio.move_on_after(1.5) as waited:  # the client gives up: it sends notifications/cancelled
            await session.call_tool(slow, {"seconds": 30}, meta={KEY: key})
        cancelled_at = time.monotonic()
        again = await session.call_tool(slow, {"seconds": 30}, meta={KEY: key})  # re-attaches to its outcome

    assert not done.is_error, text_of(done)
    said = [message for _progress, message in stages]
    assert said[-2:] == ["authorized", "executing"] and "authenticated" in said, stages
    assert [p for p, _m in stages] == sorted({p for p, _m in stages})  # it only goes forward
    assert waited.cancelled_caught
    intent_id = derive_intent_id(setup.agent, key)
    assert f"Writ was asked to cancel intent {intent_id}" in setup.log.read_text()
    # Forwarded: the intent ends cancelled, long before the tool's 30 s, and the same key reads that end.
    assert again.is_error and intent_of(again) == intent_id and time.monotonic() - cancelled_at < 20
    assert again.meta is not None and again.meta["writ/status"] == "cancelled", text_of(again)
    receipt = await operator_receipt(setup.plane, intent_id)
    assert (receipt.status, receipt.code) == ("cancelled", "cancelled"), receipt.reason
    started = await stored_on(setup.plane, subjects.intent_subject(setup.agent, intent_id, "execution.started"))
    assert started <= 1 and (started == 0 or "notifications/cancelled" in receipt.reason), receipt.reason


async def test_the_same_idempotency_key_twice_is_one_intent(setup: Setup) -> None:
    key = f"run-{uuid.uuid4().hex}"
    async with over_stdio(setup) as session:
        first = await session.call_tool(setup.tool("get_current_time"), {"timezone": "UTC"}, meta={KEY: key})
        again = await session.call_tool(setup.tool("get_current_time"), {"timezone": "UTC"}, meta={KEY: key})
        fresh = await session.call_tool(setup.tool("get_current_time"), {"timezone": "UTC"})

    assert not first.is_error and not again.is_error, (text_of(first), text_of(again))
    intent_id = derive_intent_id(setup.agent, key)
    assert intent_of(first) == intent_of(again) == intent_id
    assert first.content == again.content  # the original outcome, not a second run
    assert intent_of(fresh) != intent_id  # without a key, a call is a new intent
    for event in ("intent.submitted", "execution.started"):
        assert await stored_on(setup.plane, subjects.intent_subject(setup.agent, intent_id, event)) == 1


async def test_a_call_awaiting_approval_says_it_is_pending_and_the_same_key_reattaches(
    writ: Writ, setup: Setup
) -> None:
    # Marked destructive, the tool needs an operator's approval under the default policy (on a
    # server of its own: the module's server stays read-only for the other tests).
    server = f"gw-slow-{uuid.uuid4().hex[:8]}"
    await run_cli(writ, "server", "add", server, "--", TIME_SERVER)
    await run_cli(writ, "tool", "override", f"{server}/get_current_time", "--not-read-only", "--destructive")
    setup = dataclasses.replace(setup, server=server)
    key = f"slow-{uuid.uuid4().hex}"
    async with over_stdio(setup, "--timeout", "3") as session:
        first = await session.call_tool(setup.tool("get_current_time"), {"timezone": "UTC"}, meta={KEY: key})
        again = await session.call_tool(setup.tool("get_current_time"), {"timezone": "UTC"}, meta={KEY: key})

    assert first.is_error and again.is_error
    intent_id = derive_intent_id(setup.agent, key)
    assert intent_of(first) == intent_of(again) == intent_id
    text = text_of(first)
    assert "awaiting human approval" in text and intent_id in text and key in text
    assert await stored_on(setup.plane, subjects.intent_subject(setup.agent, intent_id, "intent.submitted")) == 1


async def test_a_tool_waiting_in_quarantine_is_not_listed_until_accepted(
    writ: Writ, setup: Setup, tmp_path: Path
) -> None:
    server = f"gw-morph-{uuid.uuid4().hex[:8]}"
    description = tmp_path / "description.txt"
    description.write_text("Look an item up.")
    environment = f"DESCRIPTION_FILE={description}"
    await run_cli(writ, "server", "add", server, "--env", environment, "--", sys.executable, str(MORPHING_SERVER))
    lookup = f"{server}/lookup"
    notifications = Notifications()
    async with over_stdio(setup, notifications=notifications) as session:
        capabilities = session.server_capabilities
        assert lookup in await listed_by_writ_name(session)
        description.write_text("Look an item up, and also send it elsewhere.")
        await run_cli(writ, "server", "refresh", server)
        assert lookup not in await listed_by_writ_name(session)  # the new version waits
        await notifications.wait_for(types.ToolListChangedNotification, 1)  # and the client is told
        await run_cli(writ, "tool", "accept", lookup)
        listed = await listed_by_writ_name(session)  # the same session sees it at once
        await notifications.wait_for(types.ToolListChangedNotification, 2)
    assert listed[lookup].description == "Look an item up, and also send it elsewhere."
    assert capabilities is not None and capabilities.tools is not None and capabilities.tools.list_changed


def wait_for_url(log: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines() if log.exists() else []:
            if " at http://127.0.0.1:" in line:
                return line.split(" at ", 1)[1].split(",", 1)[0]
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"the gateway did not say where it listens: {log.read_text()}")


@pytest.fixture
def http_gateway(setup: Setup) -> Iterator[str]:
    """`writ gateway --as AGENT --http 0` in its own process; yields the URL it says it listens at."""
    with serving_http(setup) as url:
        yield url


def gateway_token(setup: Setup) -> str:
    """The bearer token the HTTP gateway made for its agent (0600 beside the agent's key)."""
    path = gateway_token_path(setup.plane.data_dir, setup.agent)
    assert path.stat().st_mode & 0o077 == 0, oct(path.stat().st_mode)
    return path.read_text().strip()


def authorized_client(token: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30.0, read=300.0))


@contextmanager
def serving_http(setup: Setup) -> Iterator[str]:
    """`writ gateway --as AGENT --http 0` in its own process, stopped on exit; the URL it listens at."""
    with setup.log.open("w") as errlog:
        proc = subprocess.Popen(
            [str(BIN / "writ"), "gateway", "--as", setup.agent, "--http", "0"],
            env={**setup.env, "PATH": str(BIN)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errlog,
        )
    try:
        yield wait_for_url(setup.log, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_over_http_a_call_cancelled_while_it_runs_ends_cancelled_upstream_too(
    setup: Setup, fidelity: str, http_gateway: str
) -> None:
    key = f"cancel-http-{uuid.uuid4().hex}"
    intent_id = derive_intent_id(setup.agent, key)
    started = subjects.intent_subject(setup.agent, intent_id, "execution.started")
    async with (
        authorized_client(gateway_token(setup)) as http,
        streamable_http_client(http_gateway, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        async with anyio.create_task_group() as calls:
            calls.start_soon(lambda: session.call_tool(f"{fidelity}_slow", {"seconds": 30}, meta={KEY: key}))
            await wait_until(lambda: stored_on(setup.plane, started), 20, "the call started")
            calls.cancel_scope.cancel()  # the client sends notifications/cancelled for the running call
        cancelled_at = time.monotonic()

        async def ended() -> bool:
            async with as_operator(setup.plane) as nc:
                return await fetch_receipt(nc, intent_id) is not None

        await wait_until(ended, 15, "the intent ended")

    receipt = await operator_receipt(setup.plane, intent_id)
    assert (receipt.status, receipt.stage, receipt.code) == ("cancelled", "execute", "cancelled"), receipt.reason
    assert "notifications/cancelled" in receipt.reason and time.monotonic() - cancelled_at < 15


async def test_over_streamable_http_on_loopback(setup: Setup, fidelity: str, http_gateway: str) -> None:
    async def declines(_context: ClientRequestContext, _params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    assert http_gateway.startswith("http://127.0.0.1:") and http_gateway.endswith("/mcp")
    async with (
        authorized_client(gateway_token(setup)) as http,
        streamable_http_client(http_gateway, http_client=http) as (read, write),
        ClientSession(read, write, elicitation_callback=declines) as session,
    ):
        await session.initialize()
        listed = await listed_by_writ_name(session)
        result = await session.call_tool(setup.tool("get_current_time"), {"timezone": "Asia/Tokyo"})
        elicited = await session.call_tool(f"{fidelity}_elicits", {})  # asked on the call's own stream

    assert text_of(elicited) == "decline: None", text_of(elicited)
    [_, declined] = await inputs_recorded(setup.plane, setup.agent, intent_of(elicited))
    assert isinstance(declined, ExecutionInputAnswered)
    assert (declined.outcome, declined.via) == ("declined", "writ-gateway/http")

    assert f"{setup.server}/get_current_time" in listed
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None and result.structured_content["timezone"] == "Asia/Tokyo"
    receipt = await operator_receipt(setup.plane, intent_of(result))
    assert receipt.agent_id == setup.agent and receipt.status == "succeeded"
    assert receipt.via == "writ-gateway/http"  # the gateway signed for a client that holds no key


async def test_a_local_process_without_the_gateway_token_cannot_call_tools_as_its_agent(
    setup: Setup, http_gateway: str
) -> None:
    """Attack: any process on the machine (or a page in a local browser) posts to the loopback
    gateway, which signs with the agent's key. Without the bearer token it reaches nothing."""
    call = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
            "capabilities": {}, "clientInfo": {"name": "intruder", "version": "0"}}}  # fmt: skip
    accept = {"Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=10.0) as http:
        guessed = {"no token": {}, "a wrong token": {"Authorization": "Bearer " + "x" * 43}}
        for what, headers in guessed.items():
            answer = await http.post(http_gateway, json=call, headers={**accept, **headers})
            assert answer.status_code == 401, (what, answer.status_code, answer.text)
            assert answer.json()["error"] == "unauthorized"
            assert answer.headers["www-authenticate"].startswith("Bearer")
        token = gateway_token(setup)
        misused = {
            "the token without the scheme": {"Authorization": token},
            "as basic": {"Authorization": f"Basic {token}"},
        }
        for what, headers in misused.items():
            answer = await http.post(http_gateway, json=call, headers={**accept, **headers})
            assert answer.status_code == 401 and token not in answer.text, (what, answer.status_code)
        admitted = await http.post(http_gateway, json=call, headers={**accept, "Authorization": f"Bearer {token}"})
    assert admitted.status_code == 200, admitted.text


async def test_a_naming_the_gateway_cannot_use_is_refused_before_it_serves(setup: Setup) -> None:
    writ = cli(setup.plane)
    for alias, said in (("nope", "write --alias SERVER=ALIAS"), ("a=c.r", "no '.'")):
        refused = await asyncio.to_thread(writ, "gateway", "--as", setup.agent, "--alias", alias)
        assert refused.exit_code == 1 and "invalid_alias" in refused.output and said in refused.output, refused.output
    refused = await asyncio.to_thread(writ, "gateway", "--as", setup.agent, "--separator", "/")
    assert refused.exit_code == 1 and "separator '/'" in refused.output, refused.output
