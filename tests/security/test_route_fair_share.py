"""One agent keeps a shared route busy to keep another out. The route is a tool that serves one
call at a time (declared so at registration); mallory calls it from six callers at once, each
coming back the moment its retry-after says; alice calls it from one. Without a share per agent,
whichever call reaches the executor first after a place frees takes it, so six callers win about
six times in seven. With it, the place a refused agent is due is kept for it until it comes back:
alice gets about half the calls, and mallory's refusals say that it is at its share."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from scene import Scene

from writ.keys import agent_bus_creds_path, agent_key_path, read_key
from writ.sdk import WritAgent, retry_after

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]

SERIAL = Path(__file__).parents[1] / "servers" / "serial_stdio.py"
WORK = 0.25  # seconds a call holds the server's one worker
RUN = 8.0  # seconds both agents keep calling
FLOODERS = 6


async def test_an_agent_calling_from_many_callers_does_not_keep_another_off_a_shared_route(
    scene: Scene, tmp_path: Path
) -> None:
    server = f"shared-{scene.suffix}"
    await scene.ok("server", "add", server, "--max-concurrency", "1", "--", sys.executable, str(SERIAL))
    await scene.load_policy(
        f'@id("shared") permit(principal, action, resource) when {{ resource.server == "{server}" }};', tmp_path
    )
    route = f"{server}/work"
    name = f"alice-{scene.suffix}"
    await scene.ok("agent", "register", name, "--owner", f"owner-{scene.suffix}")
    alice = await WritAgent.connect(
        scene.plane.nats_url,
        name,
        read_key(agent_key_path(scene.plane.data_dir, name)),
        creds_file=agent_bus_creds_path(scene.plane.data_dir, name),
    )
    mallory = scene.agent
    # Its baseline: calls longer than the slack, so a call that finds it full is refused at once (no
    # room for a queue) and comes back after its retry-after. (Where calls wait in place instead, a
    # freed place goes to the waiting agent first by rank: tests/unit/test_admission.py.)
    warm = await mallory.call(route, {"seconds": WORK}, timeout=30)
    assert warm.status == "succeeded", warm.reason

    ran: Counter[str] = Counter()
    refusals: list[str] = []
    stop = time.monotonic() + RUN

    async def caller(agent: WritAgent, who: str) -> None:
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
        flood = [asyncio.create_task(caller(mallory, "mallory")) for _ in range(FLOODERS)]
        await asyncio.sleep(0.5)  # mallory holds the route first
        await caller(alice, "alice")
        await asyncio.gather(*flood)
    finally:
        await alice.close()

    total = ran["alice"] + ran["mallory"]
    assert total >= RUN / WORK / 2, f"the route kept serving: {ran}"
    assert ran["alice"] >= total / 3, f"alice got {ran['alice']} of {total} calls against mallory's {FLOODERS} callers"
    assert any("another agent is due the next place" in reason for reason in refusals), refusals[:3]
