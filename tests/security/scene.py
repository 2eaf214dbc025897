"""The attacker's stage: the session plane, a fresh faulty MCP server, and one agent connected with
only its own bus credential and key; helpers to load policies, register approvers, forge events
as that agent and read back what the plane did."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from cli_runner import Writ
from writ.approver import ApproverClient
from writ.keys import approver_key_path, read_key
from writ.runtime.supervisor import Plane
from writ.sdk import WritAgent
from writ_common import events as ev
from writ_common import subjects
from writ_common.bus import direct_get_batch, read_history
from writ_common.envelope import Producer, encode, make_envelope
from writ_common.events import Receipt
from writ_common.fold import fold_intent

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
