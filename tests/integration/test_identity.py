"""Agent keys over time: rotation with a grace period, revocation for every intent issued after it."""

from __future__ import annotations

import uuid

import pytest
from inprocess import DEFAULT_POLICY, Spine

from writ.sdk import WritAgent
from writ_common import commands
from writ_common.signing import generate_key, public_key_b64

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def status_with(spine: Spine, agent_id: str, key: object) -> tuple[str, str]:
    receipt = await WritAgent(spine.nc, agent_id, key).call("get_current_time", {"timezone": "UTC"}, timeout=30)  # type: ignore[arg-type]
    return receipt.status, receipt.code


async def test_rotation_keeps_the_old_key_for_its_grace_period_and_revocation_ends_everything(spine: Spine) -> None:
    await commands.call(spine.nc, "policy", "load", {"cedar": DEFAULT_POLICY})
    agent_id = f"keys-{uuid.uuid4().hex[:8]}"
    k1, k2, k3 = generate_key(), generate_key(), generate_key()
    await commands.call(
        spine.nc, "identity", "register_agent", {"agent_id": agent_id, "public_key": public_key_b64(k1)}
    )
    assert await status_with(spine, agent_id, k1) == ("succeeded", "ok")

    body = {"agent_id": agent_id, "public_key": public_key_b64(k2), "grace_seconds": 60}
    rotated = await commands.call(spine.nc, "identity", "rotate_key", body)
    assert rotated["previous_valid_until"]
    assert await status_with(spine, agent_id, k1) == ("succeeded", "ok")  # within the grace period
    assert await status_with(spine, agent_id, k2) == ("succeeded", "ok")

    body = {"agent_id": agent_id, "public_key": public_key_b64(k3), "grace_seconds": 0}
    await commands.call(spine.nc, "identity", "rotate_key", body)
    assert await status_with(spine, agent_id, k2) == ("rejected", "key_rotated")
    assert await status_with(spine, agent_id, k1) == ("rejected", "bad_signature")
    assert await status_with(spine, agent_id, k3) == ("succeeded", "ok")

    revoked = await commands.call(spine.nc, "identity", "revoke_agent", {"agent_id": agent_id, "reason": "leaked"})
    assert revoked["revoked_at"]
    assert await status_with(spine, agent_id, k3) == ("rejected", "agent_revoked")
    shown = await commands.call(spine.nc, "identity", "show_agent", {"agent_id": agent_id})
    assert shown["revoked_at"] and shown["previous_key_id"]
    with pytest.raises(commands.CommandError) as again:
        await commands.call(spine.nc, "identity", "revoke_agent", {"agent_id": agent_id})
    assert again.value.code == "already_revoked"
