"""What the rollout tests (integration and security) share: policy's commands, a new agent, and
waiting for a rollout to end."""

from __future__ import annotations

import asyncio
from typing import Any

from inprocess import Spine

from writ.sdk import WritAgent
from writ_common import commands
from writ_common.signing import generate_key, public_key_b64


async def policy(spine: Spine, command: str, body: dict[str, Any] | None = None) -> Any:
    return await commands.call(spine.nc, "policy", command, body or {})


async def new_agent(spine: Spine, agent_id: str) -> WritAgent:
    key = generate_key()
    await commands.call(
        spine.nc, "identity", "register_agent", {"agent_id": agent_id, "public_key": public_key_b64(key)}
    )
    return WritAgent(spine.nc, agent_id, key)


async def ended(spine: Spine, within: float) -> dict[str, Any]:
    """The rollout's status once it has ended (promoted or rolled back), waiting at most ``within``."""
    status: dict[str, Any] = {}
    for _ in range(int(within / 0.2)):
        status = await policy(spine, "rollout_status")
        if status["status"] != "in_progress":
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"the rollout did not end within {within}s: {status}")
