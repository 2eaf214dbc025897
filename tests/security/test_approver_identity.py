"""A rogue approver, holding only its own bus credential, tries to read requests meant for other
groups (with their arguments): by leaving out its id (an operator's view), by naming another
approver in the command, or by speaking on another approver's subject. Policy must know who asks
from the connection alone, never from what the body says.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client

from cli_runner import Writ
from writ.keys import agent_bus_creds_path, agent_key_path, approver_bus_creds_path, read_key
from writ.runtime.supervisor import Plane
from writ.sdk import WritAgent
from writ_common import subjects
from writ_common.bus import read_history
from writ_common.fold import fold_intent
from writ_common.subjects import approver_bus_name, inbox_prefix

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]

ASK_TIMEOUT = 2.0  # a publish the bus refuses is never answered: give up quickly


@dataclass
class Scene:
    plane: Plane
    group: str
    ann: str  # decides for `group`
    eve: str  # decides for another group only
    intent_id: str


async def ok(writ: Writ, *args: str) -> str:
    result = await asyncio.to_thread(writ, *args)
    assert result.exit_code == 0, result.output
    return str(result.output)


async def as_approver(plane: Plane, approver_id: str) -> Client:
    """The approver's own bus connection, from the credential `writ approver register` issued it."""
    name = approver_bus_name(approver_id)
    seed = approver_bus_creds_path(plane.data_dir, approver_id)
    return await nats.connect(plane.nats_url, user_credentials=str(seed), inbox_prefix=inbox_prefix(name))


@pytest_asyncio.fixture(loop_scope="session")
async def scene(plane: Plane, writ: Writ, tmp_path: Path, time_server: str) -> AsyncIterator[Scene]:
    suffix = uuid.uuid4().hex[:8]
    server, group = time_server, f"payments-{suffix}"
    policy = tmp_path / "policy.cedar"
    policy.write_text(
        f'@id("needs-{group}") @approval("{group}") @quorum("1")\n'
        f'permit(principal, action == Action::"call_tool", resource == Tool::"{server}/get_current_time");\n'
    )
    await ok(writ, "policy", "load", str(policy))
    ann, eve, agent_id = f"ann-{suffix}", f"eve-{suffix}", f"payer-{suffix}"
    await ok(writ, "approver", "register", ann, "--group", group)
    await ok(writ, "approver", "register", eve, "--group", f"helpdesk-{suffix}")
    await ok(writ, "agent", "register", agent_id, "--owner", f"owner-{suffix}")
    agent = await WritAgent.connect(
        plane.nats_url,
        agent_id,
        read_key(agent_key_path(plane.data_dir, agent_id)),
        creds_file=agent_bus_creds_path(plane.data_dir, agent_id),
    )
    operator = await nats.connect(plane.nats_url, **plane.settings.bus_options())
    try:
        submitted = await agent.submit(f"{server}/get_current_time", {"timezone": "Pacific/Chatham"})
        for _ in range(300):
            history = await read_history(operator, agent_id, submitted.intent_id)
            if fold_intent(history.events).status == "awaiting_approval":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"{submitted.intent_id} never awaited approval")
        yield Scene(plane, group, ann, eve, submitted.intent_id)
    finally:
        await agent.close()
        await operator.close()


def approver_subject(approver_id: str, command: str) -> str:
    """Where an approver's own commands go (spelled out: what a rogue approver would type)."""
    return f"writ.cmd.policy.approver.{approver_id}.{command}"


async def seen(nc: Client, subject: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """What a command on ``subject`` revealed: its rows (or the one request), [] if refused or unanswered."""
    service, _, command = subject.removeprefix("writ.cmd.").partition(".")
    try:
        reply = await nc.request(subject, json.dumps(body).encode(), timeout=ASK_TIMEOUT)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return []
    data = json.loads(reply.data)
    if not data.get("ok"):
        return []
    found = data["data"]
    assert service == "policy", command
    return list(found) if isinstance(found, list) else [found]


async def test_an_approver_cannot_read_other_groups_requests_by_leaving_out_or_borrowing_an_id(scene: Scene) -> None:
    eve = await as_approver(scene.plane, scene.eve)
    ann = await as_approver(scene.plane, scene.ann)
    try:
        operator_list = subjects.command_subject("policy", "list_approvals")
        operator_show = subjects.command_subject("policy", "show_approval")
        attempts = {
            "no id (the operator's view)": (operator_list, {}),
            "no id, one request": (operator_show, {"intent_id": scene.intent_id}),
            "ann's id in the body": (operator_list, {"approver_id": scene.ann}),
            "ann's id in the body, one request": (
                operator_show,
                {"intent_id": scene.intent_id, "approver_id": scene.ann},
            ),
            "eve's own subject, ann's id in the body": (
                approver_subject(scene.eve, "list_approvals"),
                {"approver_id": scene.ann},
            ),
            "eve's own subject, one request": (
                approver_subject(scene.eve, "show_approval"),
                {"intent_id": scene.intent_id},
            ),
            "ann's subject": (approver_subject(scene.ann, "list_approvals"), {}),
        }
        # All at once: each refused one waits out ASK_TIMEOUT, and none depends on another.
        answers = await asyncio.gather(*(seen(eve, subject, body) for subject, body in attempts.values()))
        for label, answer in zip(attempts, answers, strict=True):
            leaked = [row for row in answer if row.get("intent_id") == scene.intent_id]
            assert not leaked, f"{label}: eve read {leaked}"
        # The approver the request is for still sees it, arguments and all, on its own subject.
        mine = await seen(ann, approver_subject(scene.ann, "list_approvals"), {})
        assert [r["arguments"] for r in mine if r["intent_id"] == scene.intent_id] == [{"timezone": "Pacific/Chatham"}]
    finally:
        await eve.close()
        await ann.close()
