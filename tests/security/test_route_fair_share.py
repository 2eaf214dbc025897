"""One agent keeps a shared tool busy to keep another out. Without a share per agent, whichever
call reaches the executor first after a place frees takes it, so six callers win about six times
in seven. With it, the place a refused agent is due is kept for it until it comes back: alice gets
about half the calls, and mallory's refusals say another agent is due the next place.

Two shapes: both agents on one route, a tool that serves one call at a time (its places, the
route's); and each agent on its own tool of a server that takes two calls at once (its places, the
server's)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from scene import Scene

from plane_metrics import metric_value
from writ.keys import agent_bus_creds_path, agent_key_path, read_key
from writ.sdk import WritAgent, retry_after

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]

SERVERS = Path(__file__).parents[1] / "servers"
WORK = 0.25  # seconds a call holds its place
RUN = 8.0  # seconds both agents keep calling
FLOODERS = 6


async def contest(scene: Scene, tmp_path: Path, mallory_route: str, alice_route: str) -> tuple[Counter[str], list[str]]:
    """Mallory calls ``mallory_route`` from six callers and alice ``alice_route`` from one, each
    back after its retry-after, for ``RUN`` seconds: how many calls each got, and the reasons
    mallory was refused."""
    server = mallory_route.partition("/")[0]
    await scene.load_policy(
        f'@id("shared") permit(principal, action, resource) when {{ resource.server == "{server}" }};', tmp_path
    )
    name = f"alice-{scene.suffix}"
    await scene.ok("agent", "register", name, "--owner", f"owner-{scene.suffix}")
    alice = await WritAgent.connect(
        scene.plane.nats_url,
        name,
        read_key(agent_key_path(scene.plane.data_dir, name)),
        creds_file=agent_bus_creds_path(scene.plane.data_dir, name),
    )
    mallory = scene.agent
    # The routes' baselines: calls longer than the slack, so a call that finds no place is
    # refused at once (no room for a queue) and comes back after its retry-after. (Where calls
    # wait in place instead, a freed place goes to the waiting agent first by rank:
    # tests/unit/test_admission.py.)
    for route in {mallory_route, alice_route}:
        warm = await mallory.call(route, {"seconds": WORK}, timeout=30)
        assert warm.status == "succeeded", warm.reason

    ran: Counter[str] = Counter()
    refusals: list[str] = []
    stop = time.monotonic() + RUN

    async def caller(agent: WritAgent, who: str, route: str) -> None:
        while time.monotonic() < stop:
            receipt = await agent.call(route, {"seconds": WORK}, timeout=60)
            assert receipt.code in {"ok", "overloaded"}, receipt
            if receipt.code == "ok":
                ran[who] += 1
            else:
                if who == "mallory":
                    refusals.append(receipt.reason)
                await asyncio.sleep(retry_after(receipt) or 0.0)

    try:
        flood = [asyncio.create_task(caller(mallory, "mallory", mallory_route)) for _ in range(FLOODERS)]
        await asyncio.sleep(0.5)  # mallory holds the places first
        await caller(alice, "alice", alice_route)
        await asyncio.gather(*flood)
    finally:
        await alice.close()
    return ran, refusals


def fair(ran: Counter[str], capacity: int) -> None:
    """The places kept serving, and alice got at least half of an even split: a quarter of the
    calls. Without the share she got 1-4 of 29-30 on one route, 10 of 57 on the server; with it,
    30-50 % (one caller, waiting out each retry-after, cannot always take all of her half)."""
    total = ran["alice"] + ran["mallory"]
    assert total >= capacity * RUN / WORK / 2, f"the places kept serving: {ran}"
    assert ran["alice"] >= total / 4, f"alice got {ran['alice']} of {total} calls against mallory's {FLOODERS} callers"


async def shared_server(scene: Scene, kind: str, capacity: int) -> str:
    """A server from ``tests/servers/<kind>_stdio.py``, declared to take ``capacity`` calls at once."""
    server = f"{kind}-{scene.suffix}"
    script = str(SERVERS / f"{kind}_stdio.py")
    await scene.ok("server", "add", server, "--max-concurrency", str(capacity), "--", sys.executable, script)
    return server


async def test_an_agent_calling_from_many_callers_does_not_keep_another_off_a_shared_route(
    scene: Scene, tmp_path: Path
) -> None:
    route = f"{await shared_server(scene, 'serial', 1)}/work"
    ran, refusals = await contest(scene, tmp_path, route, route)
    fair(ran, capacity=1)
    assert any("another agent is due the next place" in reason for reason in refusals), refusals[:3]
    assert await metric_value(scene.plane, "executor", "writ_share_deferrals_total", scope="route", name=route) > 0


async def test_an_agent_flooding_one_tool_does_not_keep_another_off_its_servers_other_tool(
    scene: Scene, tmp_path: Path
) -> None:
    server = await shared_server(scene, "paced", 2)
    ran, _ = await contest(scene, tmp_path, f"{server}/parallel", f"{server}/thrashing")
    fair(ran, capacity=2)
    assert await metric_value(scene.plane, "executor", "writ_share_deferrals_total", scope="server", name=server) > 0
