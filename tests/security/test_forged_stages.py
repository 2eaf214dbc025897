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
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client

from cli_runner import Writ
from writ.approver import ApproverClient
from writ.cli.approvals import approver_key_path
from writ.keys import agent_bus_seed_path, agent_key_path, read_key
from writ.runtime.supervisor import Plane
from writ.sdk import WritAgent
from writ_common import events as ev
from writ_common import subjects
from writ_common.bus import direct_get_batch, read_history
from writ_common.envelope import Producer, encode, make_envelope
from writ_common.events import Receipt
from writ_common.fold import fold_intent

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]

# What a raw-NATS attacker puts in its envelopes: it may claim any producer it likes.
CLAIMS = {
    "intent.planned": "registry",
    "intent.authenticated": "identity",
    "approval.requested": "policy",
    "approval.granted": "policy",
    "execution.failed": "executor",
}


@dataclass
class Scene:
    plane: Plane
    writ: Writ
    suffix: str
    server: str
    db: Path
    agent: WritAgent
    operator: Client

    async def ok(self, *args: str) -> str:
        """Run `writ ARGS...` (on a thread: the CLI runs its own event loop) and expect success."""
        result = await asyncio.to_thread(self.writ, *args)
        assert result.exit_code == 0, result.output
        return str(result.output)

    async def load_policy(self, cedar: str, tmp: Path) -> None:
        path = tmp / f"policy-{uuid.uuid4().hex[:6]}.cedar"
        path.write_text(cedar)
        await self.ok("policy", "load", str(path))

    async def approver(self, name: str, group: str) -> ApproverClient:
        await self.ok("approver", "register", name, "--group", group)
        key = read_key(approver_key_path(self.plane.data_dir, name))
        return ApproverClient(self.operator, name, key)

    async def history(self, intent_id: str) -> list[Any]:
        return (await read_history(self.operator, self.agent.agent_id, intent_id)).events

    async def status(self, intent_id: str) -> str:
        return fold_intent(await self.history(intent_id)).status

    async def wait_status(self, intent_id: str, wanted: str, timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while (status := await self.status(intent_id)) != wanted:
            assert asyncio.get_running_loop().time() < deadline, f"{intent_id} is {status}, not {wanted}"
            await asyncio.sleep(0.05)

    async def forge(self, intent_id: str, payload: ev.Payload) -> str:
        """Publish ``payload`` as the agent, on the only intent subject it may publish to."""
        kind = ev.EVENT_TYPE[type(payload)]
        envelope = make_envelope(
            payload,
            producer=Producer(service=CLAIMS.get(kind, "agent-sdk"), instance="x", version="0"),
            intent_id=intent_id,
            agent_id=self.agent.agent_id,
        )
        subject = subjects.intent_subject(self.agent.agent_id, intent_id, "intent.submitted")
        ack = await self.agent.nc.jetstream().publish(
            subject, encode(envelope), headers={"Nats-Msg-Id": f"forged-{uuid.uuid4().hex}"}
        )
        assert ack.seq, "the bus lets the agent publish on its own submitted subject"
        return subject

    async def dead_letters_of(self, subject: str) -> list[dict[str, str]]:
        msgs = await direct_get_batch(self.operator, subjects.DLQ_STREAM, "writ.dlq.>")
        return [dict(m.headers or {}) for m in msgs if (m.headers or {}).get("Writ-Original-Subject") == subject]

    async def receipt(self, intent_id: str, timeout: float = 30.0) -> Receipt:
        return await self.agent.receipt(intent_id, timeout=timeout)

    def rows(self) -> int:
        if not self.db.exists():
            return 0
        with closing(sqlite3.connect(self.db)) as conn:
            try:
                return int(conn.execute("SELECT count(*) FROM rows").fetchone()[0])
            except sqlite3.OperationalError:
                return 0


@pytest_asyncio.fixture(loop_scope="session")
async def scene(
    plane: Plane, writ: Writ, tmp_path: Path, faulty_mcp: Callable[[Path], tuple[list[str], dict[str, str]]]
) -> AsyncIterator[Scene]:
    suffix = uuid.uuid4().hex[:8]
    db = tmp_path / "faulty.sqlite3"
    argv, env = faulty_mcp(db)
    server = f"faulty-{suffix}"
    added = await asyncio.to_thread(
        writ, "server", "add", server, *(f"--env={k}={v}" for k, v in env.items()), "--", *argv
    )
    assert added.exit_code == 0, added.output
    name = f"forger-{suffix}"
    registered = await asyncio.to_thread(writ, "agent", "register", name, "--owner", f"owner-{suffix}")
    assert registered.exit_code == 0, registered.output
    agent = await WritAgent.connect(
        plane.nats_url,
        name,
        read_key(agent_key_path(plane.data_dir, name)),
        seed_file=agent_bus_seed_path(plane.data_dir, name),
    )
    operator = await nats.connect(plane.nats_url, **plane.settings.bus_options())
    try:
        yield Scene(plane, writ, suffix, server, db, agent, operator)
    finally:
        await agent.close()
        await operator.close()


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
            approvers=rogue_group,
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
