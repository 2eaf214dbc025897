"""A person settles an outcome_unknown call: it ran, it did not, or it is retried as a new intent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from inprocess import DEFAULT_POLICY, Spine

from waiting import eventually
from writ.sdk import retry_intent
from writ_common import commands
from writ_common import events as ev
from writ_common.bus import read_history

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PERMIT_CRASH = DEFAULT_POLICY + (
    '\n@id("let-it-crash")\npermit(principal, action == Action::"call_tool", resource) when { resource.name == "crash" };\n'
)


@pytest_asyncio.fixture(scope="module", loop_scope="session", autouse=True)
async def crashing_server(
    spine: Spine,
    tmp_path_factory: pytest.TempPathFactory,
    faulty_mcp: Callable[[Path], tuple[list[str], dict[str, str]]],
) -> None:
    argv, env = faulty_mcp(tmp_path_factory.mktemp("reconcile") / "faulty.sqlite3")
    body = {"name": "crashy", "command": argv[0], "args": argv[1:], "env": env}
    await commands.call(spine.nc, "registry", "add_server", body)
    await commands.call(spine.nc, "policy", "load", {"cedar": PERMIT_CRASH})


async def unknown_outcome(spine: Spine) -> str:
    receipt = await spine.agent.call("crashy/crash", {}, timeout=60)
    assert receipt.status == "outcome_unknown", receipt.reason
    return receipt.intent_id


async def test_settling_an_unknown_outcome_is_recorded_once_with_who_and_why(spine: Spine) -> None:
    intent_id = await unknown_outcome(spine)
    body = {
        "intent_id": intent_id,
        "agent_id": spine.agent.agent_id,
        "outcome": "failed",
        "by": "alice",
        "note": "no row",
    }
    assert (await commands.call(spine.nc, "executor", "reconcile", body))["outcome"] == "failed"
    with pytest.raises(commands.CommandError) as again:
        await commands.call(spine.nc, "executor", "reconcile", {**body, "outcome": "succeeded", "by": "bob"})
    assert again.value.code == "already_reconciled"
    history = await read_history(spine.nc, spine.agent.agent_id, intent_id)
    settled = [e.payload for e in history.events if isinstance(e.payload, ev.ExecutionReconciled)]
    assert [(s.outcome, s.by, s.note) for s in settled] == [("failed", "alice", "no row")]

    async def settled_view() -> dict[str, Any] | None:  # the ledger's view follows
        row = await commands.call(spine.nc, "ledger", "intent_status", {"intent_id": intent_id})
        return dict(row) if row["status"] == "reconciled_failed" else None

    row = await eventually(settled_view, 5, "the view shows reconciled_failed")
    assert "alice" in row["reason"]


async def test_a_retry_is_a_new_intent_authorized_like_any_call_and_linked_to_the_unknown_one(spine: Spine) -> None:
    intent_id = await unknown_outcome(spine)
    retried = await retry_intent(spine.nc, spine.key, spine.agent.agent_id, intent_id)
    body = {
        "intent_id": intent_id,
        "agent_id": spine.agent.agent_id,
        "outcome": "retry",
        "by": "alice",
        "retry_intent_id": retried.intent_id,
    }
    await commands.call(spine.nc, "executor", "reconcile", body)
    receipt = await spine.agent.receipt(retried.intent_id, timeout=60)
    assert receipt.policy_ids == ["let-it-crash"]  # authorized afresh by policy
    new_history = await read_history(spine.nc, spine.agent.agent_id, retried.intent_id)
    old_history = await read_history(spine.nc, spine.agent.agent_id, intent_id)
    unknown_event = next(e for e in old_history.events if e.type == "execution.outcome_unknown")
    assert new_history.events[0].envelope.causation_id == unknown_event.envelope.id


async def test_only_an_unknown_outcome_can_be_settled(spine: Spine) -> None:
    receipt = await spine.agent.call("get_current_time", {"timezone": "UTC"}, timeout=30)
    body = {"intent_id": receipt.intent_id, "agent_id": spine.agent.agent_id, "outcome": "failed", "by": "alice"}
    with pytest.raises(commands.CommandError) as refused:
        await commands.call(spine.nc, "executor", "reconcile", body)
    assert refused.value.code == "not_unknown"
