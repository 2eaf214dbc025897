"""Another agent tries to cancel an intent that is not its own. Only the intent's own agent may ask
(``writ.intent.<agent>.<intent>.cancel_requested``, which the bus lets only that agent's user
publish): a cancel published on the victim's subject is refused by the bus, and one published on
the attacker's own subject naming the victim's intent stops nothing (readers take an intent's
subjects, agent id included, as its authority); no agent may write the end, ``intent.cancelled``.
The victim's call runs to its end, once.

It runs on the embedded plane (nats-server with bus auth, the five services) with each agent's
own credential, and the faulty MCP server so the call's effect is countable.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats.errors
import pytest
from scene import Scene

from writ.keys import agent_bus_creds_path, agent_key_path, read_key
from writ.sdk import WritAgent, request_cancel
from writ_common import events as ev
from writ_common import subjects
from writ_common.bus import last_on_subject, msg_id
from writ_common.envelope import Producer, encode, make_envelope
from writ_common.fold import fold_intent

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]


async def mallory(scene: Scene) -> WritAgent:
    name = f"mallory-{scene.suffix}"
    await scene.ok("agent", "register", name, "--owner", f"eve-{scene.suffix}")
    data = scene.plane.data_dir
    return await WritAgent.connect(
        scene.plane.nats_url,
        name,
        read_key(agent_key_path(data, name)),
        creds_file=agent_bus_creds_path(data, name),
    )


def cancel_request(intent_id: str, agent_id: str) -> bytes:
    request = ev.IntentCancelRequested(reason="mallory says stop")
    producer = Producer(service="agent-sdk", instance="x", version="0")
    return encode(make_envelope(request, producer=producer, intent_id=intent_id, agent_id=agent_id))


async def test_forged_cancel_of_another_agents_intent_is_refused(scene: Scene, tmp_path: Path) -> None:
    policy = f'permit(principal, action == Action::"call_tool", resource == Tool::"{scene.server}/slow");'
    await scene.load_policy(policy, tmp_path)
    attacker = await mallory(scene)
    try:
        victim = scene.agent.agent_id
        submitted = await scene.agent.submit(f"{scene.server}/slow", {"seconds": 1.5, "token": scene.suffix})
        intent_id = submitted.intent_id
        await scene.wait_status(intent_id, "executing")

        # 1. On its own subject, naming the victim's intent, while the call runs: stored, and stops nothing.
        own_subject = subjects.intent_subject(attacker.agent_id, intent_id, "intent.cancel_requested")
        ack = await attacker.nc.jetstream().publish(own_subject, cancel_request(intent_id, victim))
        assert ack.seq

        # 2. On the victim's own subject: the bus refuses the publish (no ack; nothing stored).
        victims_subject = subjects.intent_subject(victim, intent_id, "intent.cancel_requested")
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await attacker.nc.jetstream().publish(
                victims_subject,
                cancel_request(intent_id, victim),
                headers={"Nats-Msg-Id": msg_id(intent_id, "intent.cancel_requested")},
                timeout=1.0,
            )
        # The SDK's own way in reads the victim's intent first, which the bus does not let it read.
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await asyncio.wait_for(request_cancel(attacker.nc, victim, intent_id), 2)

        receipt = await scene.receipt(intent_id)
        assert (receipt.status, receipt.code) == ("succeeded", "ok"), receipt.reason
        assert scene.rows() == 1  # the call ran to its end, once
        history = await scene.history(intent_id)
        assert fold_intent(history).cancel_requested is None
        assert not any(isinstance(e.payload, ev.IntentCancelRequested | ev.IntentCancelled) for e in history)
        assert await last_on_subject(scene.operator.jetstream(), subjects.INTENTS_STREAM, victims_subject) is None

        # 3. The end itself is a stage's to write: the bus refuses an agent's ``cancelled``, even on its own intent.
        ends = subjects.intent_subject(victim, intent_id, "intent.cancelled")
        forged_end = ev.IntentCancelled(stage="execute", reason="forged")
        executor = Producer(service="executor", instance="x", version="0")
        envelope = make_envelope(forged_end, producer=executor, intent_id=intent_id, agent_id=victim)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await scene.agent.nc.jetstream().publish(ends, encode(envelope), timeout=1.0)
        assert await last_on_subject(scene.operator.jetstream(), subjects.INTENTS_STREAM, ends) is None
    finally:
        await attacker.close()
