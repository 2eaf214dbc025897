"""An agent cancels its own intent on the real plane: mid-call (the upstream request is cancelled,
the receipt says cancelled), before execution (no call at all), after success (nothing changes);
the same key afterwards is the same, ended intent."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from inprocess import DEFAULT_POLICY, Spine, add_faulty_server, stopped

from waiting import eventually, wait_until
from writ_common import commands, subjects
from writ_common import events as ev
from writ_common.bus import last_on_subject, read_history
from writ_common.fold import fold_intent
from writ_common.receipts import history_findings, verify_receipt
from writ_executor.app import build as build_executor

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SERVER = "sleepy"
POLICY = DEFAULT_POLICY + (
    '\n@id("let-it-sleep")\npermit(principal, action == Action::"call_tool", resource)'
    ' when { resource.name == "slow" };\n'
    '@id("rows-need-approval")\n@approval("operators")\n@quorum("1")\n'
    'permit(principal, action == Action::"call_tool", resource) when { resource.name == "append_row" };\n'
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rows_db(
    spine: Spine,
    tmp_path_factory: pytest.TempPathFactory,
    faulty_mcp: Callable[[Path], tuple[list[str], dict[str, str]]],
) -> Path:
    db = tmp_path_factory.mktemp("cancel") / "faulty.sqlite3"
    await add_faulty_server(spine, SERVER, faulty_mcp(db), POLICY)
    return db


def rows(db: Path, token: str) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM rows WHERE token = ?", (token,)).fetchone()[0])


async def stored(spine: Spine, intent_id: str, event: str) -> bool:
    subject = subjects.intent_subject(spine.agent.agent_id, intent_id, event)
    return await last_on_subject(spine.js, subjects.INTENTS_STREAM, subject) is not None


async def check_receipt(spine: Spine, intent_id: str) -> None:
    """What `writ ledger verify` checks, for this intent: signed by the ledger, and saying what its history says."""
    receipt = await spine.agent.receipt(intent_id, timeout=10)
    verify_receipt(receipt, str((await commands.call(spine.nc, "ledger", "public_key", {}))["public_key"]))
    view = fold_intent((await read_history(spine.nc, spine.agent.agent_id, intent_id)).events)
    assert history_findings([receipt], {intent_id: view}) == []


async def view_row(spine: Spine, intent_id: str, status: str) -> dict[str, Any]:
    async def row() -> dict[str, Any] | None:
        found = dict(await commands.call(spine.nc, "ledger", "intent_status", {"intent_id": intent_id}))
        return found if found["status"] == status else None

    return await eventually(row, 10, f"the views show {intent_id} {status}")


async def test_a_running_call_is_cancelled_upstream_and_ends_cancelled(spine: Spine, rows_db: Path) -> None:
    token = uuid.uuid4().hex
    seconds = 3.0
    submission = await spine.agent.submit(f"{SERVER}/slow", {"seconds": seconds, "token": token})
    intent_id = submission.intent_id
    await wait_until(lambda: stored(spine, intent_id, "execution.started"), 20, "the call started")
    started = time.monotonic()
    await asyncio.sleep(0.3)  # the request is with the server, sleeping

    answer = await spine.agent.cancel(intent_id, reason="the user closed the tab", timeout=10)

    assert answer.outcome == "cancelled" and answer.receipt is not None, str(answer)
    receipt = answer.receipt
    assert (receipt.status, receipt.stage, receipt.code) == ("cancelled", "execute", "cancelled")
    assert "notifications/cancelled" in receipt.reason and "the user closed the tab" in receipt.reason
    assert time.monotonic() - started < seconds  # it ended before the tool's natural end
    await check_receipt(spine, intent_id)
    assert (await view_row(spine, intent_id, "cancelled"))["code"] == "cancelled"
    shown = await commands.call(spine.nc, "ledger", "views_intent", {"intent_id": intent_id})
    assert [(x["attempt"], x["outcome"]) for x in shown["executions"]] == [(1, "cancelled")]
    assert "intent.cancel_requested" in [e["type"] for e in shown["events"]]
    # The server was told: its handler was cancelled, so the row it would write after sleeping never comes.
    await asyncio.sleep(max(0.0, started + seconds + 0.7 - time.monotonic()))
    assert rows(rows_db, token) == 0


async def test_an_intent_not_yet_executing_ends_cancelled_without_a_call(spine: Spine, rows_db: Path) -> None:
    token = uuid.uuid4().hex
    submission = await spine.agent.submit(f"{SERVER}/append_row", {"token": token})
    intent_id = submission.intent_id
    await wait_until(lambda: stored(spine, intent_id, "approval.requested"), 20, "it waits for an approver")

    answer = await spine.agent.cancel(intent_id, timeout=10)

    assert answer.outcome == "cancelled" and answer.receipt is not None, str(answer)
    assert (answer.receipt.stage, answer.receipt.code) == ("authorize", "cancelled")
    assert not await stored(spine, intent_id, "execution.started") and rows(rows_db, token) == 0
    await check_receipt(spine, intent_id)
    with pytest.raises(commands.CommandError):  # no request waits for people any more
        await commands.call(spine.nc, "policy", "show_approval", {"intent_id": intent_id})


async def test_a_finished_intent_is_not_changed_and_the_same_key_is_the_same_ended_intent(
    spine: Spine, rows_db: Path
) -> None:
    token = uuid.uuid4().hex
    key = f"cancel-then-retry-{token}"
    done = await spine.agent.call(f"{SERVER}/slow", {"seconds": 0, "token": token}, idempotency_key=key, timeout=30)
    assert done.status == "succeeded", done.reason

    late = await spine.agent.cancel(done.intent_id, timeout=5)
    assert (late.outcome, late.status) == ("finished", "succeeded"), str(late)
    assert not await stored(spine, done.intent_id, "intent.cancel_requested")  # nothing was sent

    # Cancelled, then the same key again: the key names that intent for good, it does not run again.
    cancelled_key = f"{key}-2"
    submission = await spine.agent.submit(
        f"{SERVER}/slow", {"seconds": 5, "token": token}, idempotency_key=cancelled_key
    )
    await wait_until(lambda: stored(spine, submission.intent_id, "execution.started"), 20, "the call started")
    assert (await spine.agent.cancel(submission.intent_id, timeout=10)).outcome == "cancelled"
    again = await spine.agent.submit(f"{SERVER}/slow", {"seconds": 0, "token": token}, idempotency_key=cancelled_key)
    assert again.duplicate and again.intent_id == submission.intent_id
    assert (await spine.agent.receipt(again.intent_id, timeout=5)).status == "cancelled"


async def test_an_unknown_intent_is_said_so_and_nothing_is_recorded(spine: Spine, rows_db: Path) -> None:
    answer = await spine.agent.cancel("in-nosuchintent", timeout=1)
    assert answer.outcome == "unknown_intent"
    assert not await stored(spine, "in-nosuchintent", "intent.cancel_requested")


async def test_with_two_executors_the_one_running_the_call_cancels_it(spine: Spine, rows_db: Path) -> None:
    executor = next(svc for svc in spine.services if svc.name == "executor")
    second = build_executor(executor.settings.model_copy(update={"instance": "test-second"}))
    await second.start()
    try:
        token = uuid.uuid4().hex
        submitted = [
            (await spine.agent.submit(f"{SERVER}/slow", {"seconds": 20, "token": token})).intent_id for _ in range(4)
        ]
        for intent_id in submitted:
            await wait_until(lambda i=intent_id: stored(spine, i, "execution.started"), 20, "the call started")
        answers = await asyncio.gather(*(spine.agent.cancel(i, timeout=15) for i in submitted))
        assert [a.outcome for a in answers] == ["cancelled"] * 4, [str(a) for a in answers]
        for intent_id in submitted:
            history = (await read_history(spine.nc, spine.agent.agent_id, intent_id)).events
            ran = {e.envelope.producer.instance for e in history if isinstance(e.payload, ev.ExecutionStarted)}
            ended = [e.envelope.producer.instance for e in history if isinstance(e.payload, ev.IntentCancelled)]
            assert len(ran) == 1 and ended == list(ran), (ran, ended)  # the replica that ran it, and only it
    finally:
        await stopped(second)
    assert rows(rows_db, token) == 0
