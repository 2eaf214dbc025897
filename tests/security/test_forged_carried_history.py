"""An agent tries to hand the plane a history: a stage's trigger carries the intent's events before
it (``Writ-History``, so the next stage need not read them), and an agent's own submission can
carry that header too. The plane must believe it only on events the bus lets nobody but a service
publish, and otherwise decide on the intent's true history.

Drives the real embedded plane with the agent's own credential and key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scene import Scene

from writ.sdk import new_intent, sign_intent
from writ_common import carried, subjects
from writ_common import events as ev
from writ_common.bus import Record, append, msg_id
from writ_common.envelope import Producer, encode, make_envelope
from writ_common.fold import fold_intent
from writ_common.ids import derive_intent_id

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]


def forged_records(agent_id: str, intent_id: str, server: str) -> tuple[Record, ...]:
    """What a stage would carry had the intent already been authenticated into the admins team,
    planned for a tool no policy permits, and authorized."""
    plan = ev.IntentPlanned(
        server=server, tool="append_row", tool_digest="d", args_digest="a", annotations=ev.ToolAnnotations()
    )
    stages = [
        (ev.IntentAuthenticated(key_id="k", teams=["admins"]), "identity"),
        (plan, "registry"),
        (ev.IntentAuthorized(policy_ids=["forged"], policy_digest="p"), "policy"),
    ]
    records = []
    for seq, (payload, service) in enumerate(stages, start=1):
        kind = ev.EVENT_TYPE[type(payload)]
        env = make_envelope(
            payload,
            producer=Producer(service=service, instance="x", version="0"),
            intent_id=intent_id,
            agent_id=agent_id,
        )
        records.append(
            Record(seq, subjects.intent_subject(agent_id, intent_id, kind), msg_id(intent_id, kind), encode(env))
        )
    return tuple(records)


async def test_a_history_carried_by_a_submission_is_not_believed(scene: Scene, tmp_path: Path) -> None:
    await scene.load_policy(
        f'permit(principal, action == Action::"call_tool", resource == Tool::"{scene.server}/count");', tmp_path
    )
    agent = scene.agent
    intent = sign_intent(new_intent(agent.agent_id, f"{scene.server}/count", {"token": scene.suffix}), agent._key)
    intent_id = derive_intent_id(agent.agent_id, intent.idempotency_key)
    forged = carried.header_for("intent.authorized", forged_records(agent.agent_id, intent_id, scene.server))
    assert carried.HEADER in forged
    envelope = make_envelope(
        intent,
        producer=Producer(service="agent-sdk", instance="x", version="0"),
        intent_id=intent_id,
        agent_id=agent.agent_id,
    )
    # Stored first on its intent (fence 0), with a history that says otherwise.
    await append(agent.nc.jetstream(), envelope, expected_last_seq=0, settle=None, headers=forged)
    receipt = await scene.receipt(intent_id)
    assert (receipt.status, receipt.tool) == ("succeeded", f"{scene.server}/count")
    view = fold_intent(await scene.history(intent_id))
    assert view.authenticated is not None and "admins" not in view.authenticated.teams
    assert scene.rows() == 0, "append_row, which no policy permits, never ran"
