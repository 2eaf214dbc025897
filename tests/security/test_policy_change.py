"""An operator loads an emergency `forbid`: nothing the old bundle let through may run after it,
neither a call still waiting for approval (a late grant must not revive it) nor a call already
authorized but not yet started."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from scene import Scene

from writ_common.commands import CommandError

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]


def permit(server: str, tool: str, *, approval: str | None = None) -> str:
    ask = f'@approval("{approval}")\n@quorum("1")\n' if approval else ""
    return f'@id("permit-{tool}")\n{ask}permit(principal, action == Action::"call_tool", resource == Tool::"{server}/{tool}");\n'


def forbid(server: str, tool: str) -> str:
    return f'@id("emergency")\nforbid(principal, action == Action::"call_tool", resource == Tool::"{server}/{tool}");\n'


async def test_an_approval_granted_after_an_emergency_forbid_runs_nothing(scene: Scene, tmp_path: Path) -> None:
    group = f"ops-{scene.suffix}"
    await scene.load_policy(permit(scene.server, "append_row", approval=group), tmp_path)
    approver = await scene.approver(f"ann-{scene.suffix}", group)
    submitted = await scene.agent.submit(f"{scene.server}/append_row", {"token": scene.suffix})
    await scene.wait_status(submitted.intent_id, "awaiting_approval")
    request = await approver.show(submitted.intent_id)

    await scene.load_policy(
        permit(scene.server, "append_row", approval=group) + forbid(scene.server, "append_row"), tmp_path
    )
    receipt = await scene.receipt(submitted.intent_id, timeout=15)
    assert (receipt.status, receipt.code) == ("denied", "forbidden"), receipt.reason
    assert "policy changed" in receipt.reason
    with pytest.raises(CommandError) as late:
        await approver.decide(request, "grant")
    assert late.value.code == "not_pending"
    assert scene.rows() == 0


async def test_an_authorized_call_does_not_run_after_an_emergency_forbid(scene: Scene, tmp_path: Path) -> None:
    await scene.load_policy(permit(scene.server, "append_row"), tmp_path)
    executor = scene.plane.pid("executor")
    assert executor is not None
    # The executor is paused so the forbid lands between the authorization and the call.
    os.kill(executor, signal.SIGSTOP)
    try:
        submitted = await scene.agent.submit(f"{scene.server}/append_row", {"token": scene.suffix})
        await scene.wait_status(submitted.intent_id, "authorized")
        await scene.load_policy(permit(scene.server, "append_row") + forbid(scene.server, "append_row"), tmp_path)
    finally:
        os.kill(executor, signal.SIGCONT)
    receipt = await scene.receipt(submitted.intent_id)
    assert (receipt.status, receipt.code) == ("failed", "policy_changed"), receipt.reason
    assert scene.rows() == 0
