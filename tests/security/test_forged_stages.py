"""An agent holding only its own Ed25519 key and its own bus credential tries to write later stages
of its own intent: the bus lets it publish on ``writ.intent.<its id>.<intent>.submitted`` and
nothing else, so it puts other event types inside messages on that subject. Every reader must
take such a message for what its subject says it is (a submission, and a second one at that),
dead-letter it once, and let it change nothing.

Each test drives the real embedded plane (nats-server with bus auth, the five services) with the
agent's own credential, and uses the faulty MCP server so the tool's side effects are countable.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from scene import Scene

from writ_common import events as ev
from writ_common.fold import fold_intent

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]


def approval_policy(server: str, tool: str, group: str, quorum: int) -> str:
    return f"""
@id("needs-{group}")
@approval("{group}")
@quorum("{quorum}")
permit(principal, action == Action::"call_tool", resource == Tool::"{server}/{tool}");
"""


async def started_tools(scene: Scene, intent_id: str) -> list[str]:
    return [e.payload.tool for e in await scene.history(intent_id) if isinstance(e.payload, ev.ExecutionStarted)]


async def test_forged_plan_cannot_swap_in_a_forbidden_tool(scene: Scene, tmp_path: Path) -> None:
    group = f"ops-{scene.suffix}"
    await scene.load_policy(approval_policy(scene.server, "count", group, 1), tmp_path)  # append_row: no permit
    approver = await scene.approver(f"ann-{scene.suffix}", group)
    submitted = await scene.agent.submit(f"{scene.server}/count", {"token": scene.suffix})
    await scene.wait_status(submitted.intent_id, "awaiting_approval")
    real = fold_intent(await scene.history(submitted.intent_id)).planned
    assert real is not None
    # The attack: the same digests, another tool.
    forged_subject = await scene.forge(
        submitted.intent_id,
        ev.IntentPlanned(
            server=scene.server,
            tool="append_row",
            tool_digest=real.tool_digest,
            args_digest=real.args_digest,
            annotations=real.annotations,
        ),
    )
    request = await approver.show(submitted.intent_id)
    assert request["tool"] == f"{scene.server}/count"
    assert (await approver.decide(request, "grant"))["outcome"] == "authorized"
    receipt = await scene.receipt(submitted.intent_id)
    assert await started_tools(scene, submitted.intent_id) == ["count"]
    assert (receipt.status, receipt.server, receipt.tool) == ("succeeded", scene.server, f"{scene.server}/count")
    assert scene.rows() == 0, "append_row, which no policy permits, never ran"
    letters = await scene.dead_letters_of(forged_subject)
    assert [h["Writ-Dead-Letter-Code"] for h in letters] == ["forged_event"], letters


async def test_forged_grant_cannot_fill_a_quorum(scene: Scene, tmp_path: Path) -> None:
    group = f"pair-{scene.suffix}"
    await scene.load_policy(approval_policy(scene.server, "count", group, 2), tmp_path)
    alice = await scene.approver(f"alice-{scene.suffix}", group)
    bob = f"bob-{scene.suffix}"
    await scene.approver(bob, group)
    submitted = await scene.agent.submit(f"{scene.server}/count", {"token": scene.suffix})
    await scene.wait_status(submitted.intent_id, "awaiting_approval")
    request = await alice.show(submitted.intent_id)
    await scene.forge(
        submitted.intent_id,
        ev.ApprovalGranted(
            approver_id=bob,
            key_id="k",
            approval_digest=request["approval_digest"],
            signed_at=request["expires_at"],
            signature="AAAA",
        ),
    )
    reply = await alice.decide(request, "grant")
    assert (reply["outcome"], reply["granted_by"]) == ("granted", [alice.approver_id]), reply
    assert await scene.status(submitted.intent_id) == "awaiting_approval"
    assert await started_tools(scene, submitted.intent_id) == []


async def test_forged_approval_request_cannot_downgrade_who_approves(scene: Scene, tmp_path: Path) -> None:
    group = f"finance-{scene.suffix}"
    await scene.load_policy(approval_policy(scene.server, "count", group, 2), tmp_path)
    await scene.approver(f"fin-{scene.suffix}", group)
    rogue_group = f"rogue-{scene.suffix}"
    rogue = await scene.approver(f"rogue-{scene.suffix}", rogue_group)
    submitted = await scene.agent.submit(f"{scene.server}/count", {"token": scene.suffix})
    await scene.wait_status(submitted.intent_id, "awaiting_approval")
    real = fold_intent(await scene.history(submitted.intent_id)).approval
    assert real is not None
    await scene.forge(
        submitted.intent_id,
        ev.ApprovalRequested(
            approval_digest=real.approval_digest,
            policy_digest=real.policy_digest,
            policy_ids=real.policy_ids,
            group=rogue_group,
            quorum=1,
            owner_may_approve=True,
            expires_at="2099-01-01T00:00:00Z",
            tool=real.tool,
            tool_digest=real.tool_digest,
            args_digest=real.args_digest,
            deadline=real.deadline,
        ),
    )
    picture = {
        "intent_id": submitted.intent_id,
        "agent_id": scene.agent.agent_id,
        "approval_digest": real.approval_digest,
    }
    reply = await rogue.decide(picture, "grant")
    assert reply["outcome"] == "refused" and reply["code"] == "not_in_group", reply
    assert await scene.status(submitted.intent_id) == "awaiting_approval"
    assert await started_tools(scene, submitted.intent_id) == []


async def test_forged_authentication_cannot_add_a_team(scene: Scene, tmp_path: Path) -> None:
    admins = f"admins-{scene.suffix}"
    await scene.load_policy(
        f"""
@id("admins-only")
permit(principal in Team::"{admins}", action == Action::"call_tool", resource == Tool::"{scene.server}/count");
""",
        tmp_path,
    )
    # Policy is paused (SIGSTOP) so the forgery lands between identity's word and policy's
    # decision every time: the attacker's best case, made deterministic.
    policy_pid = scene.plane.pid("policy")
    assert policy_pid is not None
    os.kill(policy_pid, signal.SIGSTOP)
    try:
        submitted = await scene.agent.submit(f"{scene.server}/count", {"token": scene.suffix})
        await scene.wait_status(submitted.intent_id, "planned")
        await scene.forge(
            submitted.intent_id, ev.IntentAuthenticated(key_id="k", owner=f"owner-{scene.suffix}", teams=[admins])
        )
    finally:
        os.kill(policy_pid, signal.SIGCONT)
    receipt = await scene.receipt(submitted.intent_id)
    assert (receipt.status, receipt.code) == ("denied", "no_permit"), receipt.reason
    assert await started_tools(scene, submitted.intent_id) == []


async def test_forged_failure_cannot_suppress_the_receipt(scene: Scene, tmp_path: Path) -> None:
    await scene.load_policy(
        f'@id("slow-ok")\npermit(principal, action == Action::"call_tool", resource == Tool::"{scene.server}/slow");',
        tmp_path,
    )
    submitted = await scene.agent.submit(f"{scene.server}/slow", {"seconds": 1.5, "token": scene.suffix})
    await scene.wait_status(submitted.intent_id, "executing")
    await scene.forge(
        submitted.intent_id,
        ev.ExecutionFailed(attempt=1, retryable=False, code="tool_error", reason="tool_error: nothing happened"),
    )
    receipt = await scene.receipt(submitted.intent_id)
    assert (receipt.status, receipt.code) == ("succeeded", "ok"), receipt.reason
    assert scene.rows() == 1
    verify = await asyncio.to_thread(scene.writ, "ledger", "verify")
    assert verify.exit_code == 0, verify.output
