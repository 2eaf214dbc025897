"""An agent floods the bus with small messages it is allowed to send. NATS limits a user's message
size, not its rate, so identity meters every agent's ingress (each node's CONNZ) and suspends one
over its budget at the bus: every node closes its connections and refuses its JWT, while another
agent's calls go on and the flooder's stored intent still gets its receipt. Issuing its bus JWT
again (``writ agent creds``) reinstates it."""

from __future__ import annotations

import contextlib
import urllib.request
import uuid
from pathlib import Path

import nats
import pytest
from nats.aio.client import RawCredentials
from scene import Scene

from waiting import reached
from writ.keys import agent_bus_creds_path, agent_key_path, read_key
from writ.sdk import new_intent, publish_intent, sign_intent, wait_receipt
from writ_common import subjects
from writ_common.local import bus_credentials

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]

# Above the default budget over its window (1,000 msgs/s x 5 s) in one burst, and nothing stored:
# Direct Get requests on its own intents' subjects, fire and forget (no reply subject, no answer).
FLOOD = 8_000
CONNECT = {"allow_reconnect": False, "connect_timeout": 2}


def suspensions(scene: Scene) -> float:
    url = scene.plane.metrics_url("identity")
    assert url, "identity serves /metrics"
    with urllib.request.urlopen(url, timeout=5) as page:
        for line in page.read().decode().splitlines():
            if line.startswith('writ_agent_suspensions_total{code="ingress_budget_exceeded"}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def refused(url: str, creds: str) -> bool:
    try:
        nc = await nats.connect(url, user_credentials=RawCredentials(creds), **CONNECT)
    except nats.errors.Error as exc:
        return "authorization" in str(exc).lower() or "revoked" in str(exc).lower()
    await nc.close()
    return False


async def test_an_agent_flooding_the_bus_is_suspended_and_others_are_not(scene: Scene, tmp_path: Path) -> None:
    plane = scene.plane
    await scene.load_policy(
        f'@id("all-{scene.server}") permit(principal, action, resource) when {{ resource.server == "{scene.server}" }};',
        tmp_path,
    )
    name = f"flood-{uuid.uuid4().hex[:8]}"
    await scene.ok("agent", "register", name)
    creds_file = agent_bus_creds_path(plane.data_dir, name)
    as_agent = {**bus_credentials(creds_file, f"agent-{name}"), **CONNECT}
    flooder = await nats.connect(plane.nats_url, **as_agent)
    try:
        # One real call of its own, stored before the flood: it runs as usual.
        intent = sign_intent(
            new_intent(name, f"{scene.server}/count", {"token": f"{scene.suffix}-flood"}),
            read_key(agent_key_path(plane.data_dir, name)),
        )
        stored = await publish_intent(flooder, intent)
        subject = f"$JS.API.DIRECT.GET.{subjects.INTENTS_STREAM}.{subjects.INTENT_PREFIX}.{name}.x.submitted"
        with contextlib.suppress(nats.errors.Error):  # the server may close it mid-flood
            for _ in range(FLOOD):
                await flooder.publish(subject, b"")
            await flooder.flush(timeout=5)
        # Within a check or two: every connection of its closed, its JWT refused.
        assert await reached(lambda: flooder.is_closed, 10), "the flooder is still connected"
        assert await refused(plane.nats_url, creds_file.read_text()), "the flooder's creds still connect"
        shown = await scene.ok("agent", "show", name)
        assert "suspended" in shown and "ingress_budget_exceeded" in shown and "msgs/s" in shown, shown
        assert "suspended" in await scene.ok("agent", "list")
        assert suspensions(scene) >= 1, "identity counts the suspension in its /metrics"
        # Another agent is not touched, and the flooder's stored intent ends as it would have.
        other = await scene.agent.call(f"{scene.server}/count", {"token": scene.suffix}, timeout=30)
        assert other.status == "succeeded", other.reason
        receipt = await wait_receipt(scene.operator, stored.intent_id, timeout=30, agent_id=name)
        assert receipt.status == "succeeded", receipt.reason
    finally:
        await flooder.close()

    # The operator reinstates it: its bus JWT is issued again (strictly after the suspension).
    assert "reinstated" in await scene.ok("agent", "creds", name)
    back = await nats.connect(plane.nats_url, **as_agent)
    try:
        await back.publish(subject, b"")
        await back.flush(timeout=2)
        assert back.is_connected
    finally:
        await back.close()
    shown = await scene.ok("agent", "show", name)
    assert "active" in shown and "ingress_budget_exceeded" not in shown, shown
