"""An agent's cancel request, as the fold, every stage, the executor and the receipts read it. Pure."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from test_rules import KEY, authorized, started, stored, view_of

from writ.sdk import new_intent, sign_intent
from writ_common import events as ev
from writ_common import topology
from writ_common.cancellation import call_cancelled, cancellation
from writ_common.envelope import Producer, StoredEvent, UndecodableEvent, make_envelope
from writ_common.fold import fold_intent
from writ_common.receipts import ending
from writ_executor.cancels import Running, until_stopped
from writ_executor.domain import Invoke, decide_execution, next_step

pytestmark = pytest.mark.unit

ASK = ev.IntentCancelRequested(reason="the user changed their mind")


def submitted() -> ev.IntentSubmitted:
    return sign_intent(new_intent("bot", "s/t", {}), KEY)


class TestFold:
    def test_the_first_request_counts_and_an_end_after_it_is_terminal_cancelled(self) -> None:
        intent = submitted()
        ended = ev.IntentCancelled(stage="plan", reason="cancelled by its agent before plan")
        view = view_of(intent, ev.IntentAuthenticated(key_id="k"), ASK, ev.IntentCancelRequested(reason="again"), ended)
        assert view.cancel_requested == ASK
        assert view.is_terminal and view.status == "cancelled"
        assert ev.TERMINAL_STATUS["intent.cancelled"] == "cancelled"

    def test_a_request_after_the_end_changes_nothing(self) -> None:
        done = ev.ExecutionSucceeded(attempt=1, result={}, result_digest="r", duration_ms=1)
        view = authorized(False, started(1), done, ASK)
        assert view.cancel_requested is None and view.status == "succeeded"
        assert cancellation(view, "execute") == [] and next_step(view) is None

    def test_a_request_before_its_intent_was_submitted_counts_for_nothing(self) -> None:
        intent = submitted()
        view = fold_intent([stored(ASK, intent, 1), stored(intent, intent, 2)])
        assert view.submitted is not None and view.cancel_requested is None


class TestStages:
    def test_the_stage_that_next_acts_ends_the_intent_cancelled_where_it_stood(self) -> None:
        intent = submitted()
        [end] = cancellation(view_of(intent, ASK), "authenticate")
        assert isinstance(end, ev.IntentCancelled) and (end.stage, end.attempt) == ("authenticate", 0)
        assert "the user changed their mind" in end.reason
        assert cancellation(view_of(intent), "authenticate") == []  # no request: decide as usual

    def test_a_started_call_is_not_a_stages_to_end(self) -> None:
        assert cancellation(authorized(False, started(1), ASK), "execute") == []

    def test_the_receipt_says_cancelled_at_that_stage(self) -> None:
        end = ev.IntentCancelled(stage="authorize", reason="cancelled by its agent before authorize")
        assert ending(end) == ("authorize", "cancelled", end.reason)


class TestExecutor:
    def test_no_call_yet_ends_cancelled_without_one(self) -> None:
        step = decide_execution(authorized(False, ASK), now=datetime.now(UTC))
        assert isinstance(step, ev.IntentCancelled) and (step.stage, step.attempt) == ("execute", 0)
        assert next_step(authorized(False)) == Invoke(attempt=1)  # the same intent, not cancelled

    def test_a_failed_attempt_waiting_for_its_retry_is_not_retried(self) -> None:
        failed = ev.ExecutionAttemptFailed(attempt=1, code="server_unavailable", reason="down", retry_after_ms=500)
        step = next_step(authorized(True, started(1), failed, ASK))
        assert isinstance(step, ev.IntentCancelled) and step.attempt == 1 and "not tried again" in step.reason

    def test_an_interrupted_idempotent_call_is_not_called_again(self) -> None:
        step = next_step(authorized(True, started(1), ASK))
        assert isinstance(step, ev.IntentCancelled) and step.attempt == 1

    def test_an_interrupted_non_idempotent_call_stays_outcome_unknown(self) -> None:
        # It may have run: a cancel request must not hide a possible effect.
        assert isinstance(next_step(authorized(False, started(1), ASK)), ev.ExecutionOutcomeUnknown)

    def test_a_call_stopped_while_it_ran_says_its_server_was_told(self) -> None:
        end = call_cancelled(ASK, 2, sent=True)
        assert (end.stage, end.attempt) == ("execute", 2) and "notifications/cancelled" in end.reason
        assert "before attempt 2 was sent" in call_cancelled(ASK, 2, sent=False).reason


class TestUntilStopped:
    def test_a_stop_cancels_the_running_call_and_waits_for_it_to_end(self) -> None:
        ended: list[str] = []

        async def call() -> str:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                ended.append("cancelled")  # where the mcp SDK sends notifications/cancelled
                raise
            return "slept"

        async def scenario() -> tuple[str | None, bool]:
            running = Running()
            asyncio.get_running_loop().call_later(0.01, running.stop, ASK)
            return await until_stopped(call(), running)

        assert asyncio.run(asyncio.wait_for(scenario(), 5)) == (None, True)
        assert ended == ["cancelled"]

    def test_a_call_that_ends_first_keeps_its_result(self) -> None:
        async def scenario() -> tuple[str | None, bool]:
            running = Running()

            async def call() -> str:
                return "done"

            answered = await until_stopped(call(), running)
            running.stop(ASK)  # too late: changes nothing
            return answered

        assert asyncio.run(scenario()) == ("done", False)

    def test_a_cancellation_of_our_own_cancels_the_call_and_goes_on(self) -> None:
        async def scenario() -> bool:
            running = Running()
            outer = asyncio.ensure_future(until_stopped(asyncio.sleep(30), running))
            await asyncio.sleep(0.01)
            outer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await outer
            return running.task is not None and running.task.cancelled()

        assert asyncio.run(scenario())


class TestWhoMaySay:
    def test_only_the_agent_asks_and_only_stages_end(self) -> None:
        assert "cancel_requested" in topology.intent_tokens_of(topology.AGENT)
        assert "cancelled" not in topology.intent_tokens_of(topology.AGENT)
        assert "cancelled" in topology.intent_tokens_of("executor")
        assert "cancel_requested" not in topology.intent_tokens_of("executor")

    def test_a_cancelled_end_written_by_an_agent_is_not_believed(self) -> None:
        end = ev.IntentCancelled(stage="execute", reason="forged")
        env = make_envelope(
            end, producer=Producer(service="agent-sdk", instance="x", version="0"), intent_id="in-x", agent_id="bot"
        )
        with pytest.raises(UndecodableEvent):
            topology.admit(StoredEvent(seq=1, subject="writ.intent.bot.in-x.cancelled", envelope=env, payload=end))
