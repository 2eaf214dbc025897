"""An agent of a canary's slice wants back what the candidate takes from it. Its rollback triggers
read the slice's own decisions, so the agent floods the candidate with calls it knows are denied,
to push the denial rate over the trigger and have the controller restore the bundle it had. No one
agent carries a signal: the canary soaks and is promoted; a harm the other agents see still rolls
it back. And the other way: an agent that wants a candidate kept, though it harms the others,
floods it with calls it allows so the others' denials weigh less. Nor does one agent hide a
signal: promotion waits, and the status says what the signal reads without that agent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from inprocess import DEFAULT_POLICY, Spine
from rollouts import ended, new_agent, policy

from writ.sdk import WritAgent
from writ_common.commands import CommandError

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]

CLOCK = "time/get_current_time"
CONVERT = "time/convert_time"
CONVERSION = {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"}
NO_CONVERSIONS = DEFAULT_POLICY + (
    '\n@id("no-conversions")\n'
    'forbid(principal, action == Action::"call_tool", resource) when { resource.name == "convert_time" };\n'
)
TRIGGER = "denial_rate>0.5 over 60s for 1s"


async def agent(spine: Spine, name: str) -> WritAgent:
    return await new_agent(spine, f"{name}-{uuid.uuid4().hex[:8]}")


@pytest_asyncio.fixture(loop_scope="session")
async def enforced(spine: Spine) -> AsyncIterator[None]:
    """The default bundle for everyone before and after (a promoted candidate is put back)."""
    await policy(spine, "load", {"cedar": DEFAULT_POLICY})
    yield
    try:
        await policy(spine, "rollout_abort")
    except CommandError as exc:
        assert exc.code == "no_rollout", exc
    await policy(spine, "load", {"cedar": DEFAULT_POLICY})


async def canary_of(spine: Spine, names: tuple[str, ...], soak: str) -> tuple[list[WritAgent], dict[str, Any]]:
    """New agents named ``names``, and the canary (conversions forbidden) started for exactly them."""
    agents = [await agent(spine, name) for name in names]
    body = {
        "cedar": NO_CONVERSIONS,
        "agents": [a.agent_id for a in agents],
        "rollback_if": [TRIGGER],
        "promote_after": soak,
        "cooldown": "1s",
        "min_decisions": 3,
    }
    return agents, dict(await policy(spine, "rollout", body))


async def test_an_agent_cannot_roll_back_its_canary_by_flooding_it_with_denied_calls(
    spine: Spine, enforced: None
) -> None:
    (alice, bob, mallory), started = await canary_of(spine, ("alice", "bob", "mallory"), soak="8s")
    for _ in range(3):
        for caller in (alice, bob):
            assert (await caller.call(CLOCK, {"timezone": "UTC"})).status == "succeeded"
    flood = [await mallory.call(CONVERT, CONVERSION) for _ in range(12)]
    assert {(r.status, r.code) for r in flood} == {("denied", "forbidden")}
    # By all of the slice's decisions the rate is 12/18; with any one agent left out, 0.
    status = await ended(spine, within=20.0)
    assert status["status"] == "promoted", status
    signals = {s["trigger"]: s for s in status["signals"]}
    assert signals[TRIGGER]["value"] == 0.0 and signals[TRIGGER]["samples"] == 18
    # The operator sees who moved the signal alone.
    assert (signals[TRIGGER]["every_agent"], signals[TRIGGER]["left_out"]) == (0.6667, mallory.agent_id)
    assert (await policy(spine, "show"))["policy_digest"] == started["candidate_digest"]


async def test_an_agent_cannot_get_a_canary_that_harms_the_others_promoted_by_flooding_it_with_allowed_calls(
    spine: Spine, enforced: None
) -> None:
    (alice, bob, mallory), started = await canary_of(spine, ("alice", "bob", "mallory"), soak="4s")
    for _ in range(20):
        assert (await mallory.call(CLOCK, {"timezone": "UTC"})).status == "succeeded"
    for _ in range(3):
        for caller in (alice, bob):
            assert (await caller.call(CONVERT, CONVERSION)).status == "denied"
    # By all decisions 6/26; with alice or bob left out, 3/23: no rollback. Without mallory, 1.0.
    await asyncio.sleep(7.0)  # past the soak
    status = await policy(spine, "rollout_status")
    assert status["status"] == "in_progress", f"promoted though it harms alice and bob: {status}"
    signals = {s["trigger"]: s for s in status["signals"]}
    assert signals[TRIGGER]["value"] == 0.1304 and signals[TRIGGER]["samples"] == 26, signals
    assert (signals[TRIGGER]["hidden"], signals[TRIGGER]["hidden_by"]) == (1.0, mallory.agent_id)
    assert (await policy(spine, "show"))["policy_digest"] == started["previous_digest"], "the others keep theirs"


async def test_a_harm_the_others_see_still_rolls_the_canary_back(spine: Spine, enforced: None) -> None:
    (alice, bob, carol), started = await canary_of(spine, ("alice", "bob", "carol"), soak="60s")
    for _ in range(2):
        for caller in (alice, bob, carol):
            assert (await caller.call(CONVERT, CONVERSION)).status == "denied"
    status = await ended(spine, within=15.0)
    assert (status["status"], status["trigger"]) == ("rolled_back", TRIGGER), status
    assert (await policy(spine, "show"))["policy_digest"] == started["previous_digest"]
