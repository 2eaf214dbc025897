"""An operator-level mistake or a hostile registration puts subject syntax (dots, wildcards) into a
name that becomes a NATS subject token or bus config. Before, `writ approver register X --group 'a.>'`
made every later bus reload fail: a revoked agent kept its bus access and no agent could register.
Every such name must be refused up front, and the bus users must keep following registrations.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from cli_runner import Writ
from writ.keys import agent_bus_creds_path
from writ.runtime.supervisor import Plane
from writ_common.subjects import inbox_prefix

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]


async def run(writ: Writ, *args: str) -> tuple[int, str]:
    result = await asyncio.to_thread(writ, *args)
    return result.exit_code, str(result.output)


async def connect_agent(plane: Plane, agent_id: str) -> Client:
    seed = agent_bus_creds_path(plane.data_dir, agent_id)
    return await nats.connect(
        plane.nats_url,
        user_credentials=str(seed),
        inbox_prefix=inbox_prefix(f"agent-{agent_id}"),
        allow_reconnect=False,
        connect_timeout=2,
    )


async def test_a_wildcard_group_name_cannot_freeze_the_bus_users(plane: Plane, writ: Writ, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    # A revoked agent must lose the bus even after the attempt: connect it first.
    doomed = f"doomed-{suffix}"
    assert (await run(writ, "agent", "register", doomed, "--owner", "tests"))[0] == 0

    for args, code in [
        (("approver", "register", f"rogue-{suffix}", "--group", "a.>"), "invalid_group"),
        (("approver", "register", f"rogue2-{suffix}", "--group", "ok", "--group", "b *"), "invalid_group"),
        (("approver", "register", f"rogue.{suffix}", "--group", "ok"), "invalid_approver_id"),
        (("agent", "register", f"agent.{suffix}.>", "--owner", "tests"), "invalid_agent_id"),
    ]:
        exit_code, output = await run(writ, *args)
        assert exit_code != 0 and f"{code}:" in output, (args, output)

    bad_policy = tmp_path / "wildcard-group.cedar"
    bad_policy.write_text('@id("rogue") @approval("ops.>") permit(principal, action, resource);\n')
    exit_code, output = await run(writ, "policy", "load", str(bad_policy))
    assert exit_code != 0 and "invalid_policy:" in output and "ops.>" in output, output

    # The bus still follows registrations both ways.
    newcomer = f"newcomer-{suffix}"
    exit_code, output = await asyncio.wait_for(run(writ, "agent", "register", newcomer, "--owner", "tests"), 30)
    assert exit_code == 0, output
    nc = await connect_agent(plane, newcomer)
    await nc.close()
    exit_code, output = await asyncio.wait_for(run(writ, "agent", "revoke", doomed), 30)
    assert exit_code == 0, output
    with pytest.raises(Exception, match=r"[Aa]uthorization"):
        await connect_agent(plane, doomed)


async def test_an_agent_cannot_take_a_name_whose_notices_are_the_approvers(plane: Plane, writ: Writ) -> None:
    """Agent notices live under writ.notice.<agent>.>, approvers' under writ.notice.approvals.>: an
    agent registered as 'approvals' would be let read every group's approval notices (and its own
    receipt notices would reach approvers). The name is refused, with the reason."""
    exit_code, output = await run(writ, "agent", "register", "approvals", "--owner", "tests")
    assert exit_code != 0 and "invalid_agent_id:" in output and "reserved" in output, output
