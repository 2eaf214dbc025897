"""Resource subscriptions and list changes through `writ gateway --http`, to two `mcp` SDK clients
of one gateway, from a real stdio MCP server (tests/servers/subscribable_stdio.py) on the session's
plane: an update reaches exactly the clients holding its URI; one client's unsubscribe leaves the
other's; the subscription outlives the executor (SIGKILLed, restarted by the supervisor);
resources/list_changed and prompts/list_changed reach every client (said by the server, or seen in a listing that changed); a client that leaves is unsubscribed for; and a
malformed notice on the agent's subject is ignored by the gateway, which goes on relaying."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning
from plane_reads import as_operator
from test_gateway import Notifications, Setup, authorized_client, gateway_token, serving_http, text_of

from cli_runner import cli
from waiting import wait_until
from writ.runtime.supervisor import Plane
from writ_common import subjects

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

SUBSCRIBABLE = Path(__file__).resolve().parent.parent / "servers" / "subscribable_stdio.py"


@pytest.fixture(scope="module")
def setup(plane: Plane, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """One agent, the subscribable server (its names unique to this module), and a policy that
    permits every operation on it."""
    writ = cli(plane)
    suffix = uuid.uuid4().hex[:8]
    agent, server = f"sub-agent-{suffix}", f"sub{suffix}"
    assert (registered := writ("agent", "register", agent, "--owner", "tests")).exit_code == 0, registered.output
    added = writ("server", "add", server, "--env", f"PREFIX={server}", "--", sys.executable, str(SUBSCRIBABLE))
    assert added.exit_code == 0, added.output
    folder = tmp_path_factory.mktemp("subscriptions")
    policy = folder / "subscriptions.cedar"
    policy.write_text(
        f'@id("subscribable")\npermit(principal, action, resource) when {{ resource.server == "{server}" }};\n'
    )
    assert (loaded := writ("policy", "load", str(policy))).exit_code == 0, loaded.output
    return Setup(agent, server, plane, folder / "gateway.log")


@pytest.fixture(scope="module")
def gateway(setup: Setup) -> Iterator[str]:
    with serving_http(setup) as url:
        yield url


@asynccontextmanager
async def client(setup: Setup, url: str, notifications: Notifications) -> AsyncIterator[ClientSession]:
    async with (
        authorized_client(gateway_token(setup)) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write, message_handler=notifications) as session,
    ):
        await session.initialize()
        yield session


def updated(notifications: Notifications) -> list[str]:
    return [str(n.params.uri) for n in notifications.received if isinstance(n, types.ResourceUpdatedNotification)]


async def subscribed_upstream(session: ClientSession, server: str) -> list[str]:
    """What the server itself holds subscribed now (its own tool says)."""
    answer = await session.call_tool(f"{server}_subscribed", {})
    assert not answer.is_error, text_of(answer)
    return list(json.loads(text_of(answer)))


async def touch(session: ClientSession, server: str, uri: str) -> None:
    answer = await session.call_tool(f"{server}_touch", {"uri": uri})
    assert not answer.is_error and text_of(answer) == "true", text_of(answer)  # the server had it subscribed


async def test_subscriptions_reach_the_clients_holding_them_and_survive_the_executor(
    setup: Setup, gateway: str
) -> None:
    heard_one, heard_two = Notifications(), Notifications()
    with warnings.catch_warnings():  # subscribe: in MCP 2025-11-25, replaced in the SDK's newest revision
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await relayed(setup, gateway, heard_one, heard_two)


async def relayed(setup: Setup, gateway: str, heard_one: Notifications, heard_two: Notifications) -> None:
    server = setup.server
    a, b = f"watch://{server}/a", f"watch://{server}/b"
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(client(setup, gateway, heard_one))
        two_stack = await stack.enter_async_context(AsyncExitStack())
        two = await two_stack.enter_async_context(client(setup, gateway, heard_two))
        capabilities = one.server_capabilities
        assert capabilities is not None and capabilities.resources is not None
        assert capabilities.resources.list_changed and capabilities.resources.subscribe

        # (a) one subscribes to a, two to b; a notice that is not one is ignored on the way.
        await one.subscribe_resource(a)
        async with as_operator(setup.plane) as nc:
            for junk in (b"{not json", b'{"server": 1, "uri": []}', b"[]", b"x" * 20000):
                await nc.publish(subjects.resource_updated_subject(setup.agent), junk)
            await nc.publish(subjects.list_changed_subject(server, "bogus"), b"")
            await nc.flush()
        await touch(one, server, a)
        await two.subscribe_resource(b)
        await touch(two, server, b)  # after a's: two hears b only once a's went by
        await heard_two.wait_for(types.ResourceUpdatedNotification, 1)
        await heard_one.wait_for(types.ResourceUpdatedNotification, 1)
        await asyncio.sleep(0.3)
        assert (updated(heard_one), updated(heard_two)) == ([a], [b])

        # (b) both hold a; two unsubscribes: a local stop, the subscription stays for one.
        await two.subscribe_resource(a)
        left = await two.unsubscribe_resource(a)
        assert left.meta is not None and "another client" in str(left.meta["writ/unsubscribed"])
        assert await subscribed_upstream(one, server) == [a, b]
        await touch(one, server, a)
        await touch(one, server, b)
        await heard_two.wait_for(types.ResourceUpdatedNotification, 2)
        await heard_one.wait_for(types.ResourceUpdatedNotification, 2)
        assert (updated(heard_one), updated(heard_two)) == ([a, a], [b, b])

        # (d) the server lists one more resource: every client hears resources/list_changed.
        await one.call_tool(f"{server}_add_resource", {"name": "c", "quiet": False})
        await heard_one.wait_for(types.ResourceListChangedNotification, 1)
        await heard_two.wait_for(types.ResourceListChangedNotification, 1)
        # A server that changes its listing without saying so: seen when a client lists again.
        await one.call_tool(f"{server}_add_resource", {"name": "d", "quiet": True})
        listed = {str(r.uri) for r in (await one.list_resources()).resources}
        assert {f"watch://{server}/c", f"watch://{server}/d"} <= listed
        await heard_two.wait_for(types.ResourceListChangedNotification, 2)
        # A server that offers one more prompt: every client hears prompts/list_changed.
        await two.call_tool(f"{server}_add_prompt", {"name": "bye"})
        await heard_one.wait_for(types.PromptListChangedNotification, 1)
        await heard_two.wait_for(types.PromptListChangedNotification, 1)
        assert f"{server}_bye" in {p.name for p in (await one.list_prompts()).prompts}

        # (c) the executor dies; its successor subscribes again on its own, nobody asked anew.
        killed = await asyncio.to_thread(setup.plane.kill_service, "executor")
        await wait_until(lambda: setup.plane.pid("executor") not in (None, killed), 30, "the executor restarted")
        await setup.plane.wait_ready_async(60)
        await touch(one, server, a)
        await heard_one.wait_for(types.ResourceUpdatedNotification, 3)
        assert updated(heard_one) == [a, a, a]

        # Two leaves holding b alone: unsubscribed on its behalf; a stays (one holds it).
        await two_stack.aclose()

        async def only_a_left() -> bool:
            return await subscribed_upstream(one, server) == [a]

        await wait_until(only_a_left, 15, "b unsubscribed for the client that left")
        await one.unsubscribe_resource(a)
        assert await subscribed_upstream(one, server) == []
