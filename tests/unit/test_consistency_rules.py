"""The cluster's pure rules: is a history new enough to decide on, is a stored event ours, which
intents are stranded and how each ends, how seed URLs are read. No broker, no I/O."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from test_rules import KEY, authorized, started, stored, view_of

from writ.sdk import new_intent, sign_intent
from writ_common import events as ev
from writ_common.bus import split_servers
from writ_common.consistency import Landed, covers, landed
from writ_common.envelope import StoredEvent
from writ_common.intent_consumer import retry_delay
from writ_common.settings import WritSettings
from writ_common.stranded import (
    SWEEP_GRACE,
    expiry,
    past_due,
    stranded_findings,
    sweep_execution,
    sweep_stage,
    waiting_for,
)
from writ_common.sweeper import OpenIntents, type_filter
from writ_executor.domain import Invoke, decide_execution

pytestmark = pytest.mark.unit

NOW = datetime.now(UTC)
LATER = NOW + timedelta(hours=1)  # past every test intent's deadline and the grace


class TestMyTriggerIsInThisHistory:
    def test_a_history_that_reaches_the_trigger_covers_it(self) -> None:
        view = authorized(False)
        trigger = view.events[-1]
        assert covers(view.events, trigger.seq, min_seq=trigger.seq, event_id=trigger.envelope.id)

    def test_a_history_ending_before_the_trigger_is_behind(self) -> None:
        view = authorized(False)
        assert not covers(view.events[:-1], view.events[-2].seq, min_seq=view.events[-1].seq)

    def test_a_history_without_the_trigger_event_is_behind_whatever_its_sequence(self) -> None:
        view = authorized(False)
        other = authorized(False).events[-1]  # same shape, another event
        assert not covers(view.events, view.events[-1].seq, min_seq=0, event_id=other.envelope.id)

    def test_no_bound_means_any_history_will_do(self) -> None:
        assert covers([], 0)


class TestIsTheStoredEventOurs:
    def test_our_envelope_stored_is_ours_at_its_sequence(self) -> None:
        view = authorized(False, started(1))
        mine = view.events[-1]
        assert landed({"x:execution.started:1": mine.seq}, view.events, msg_id="x", envelope_id=mine.envelope.id) == (
            Landed.OURS,
            mine.seq,
        )

    def test_another_event_under_our_message_id_is_foreign(self) -> None:
        """An earlier delivery's execution.started: a duplicate ack for it must never start a call."""
        view = authorized(False, started(1))
        ours_never_stored = authorized(False, started(1)).events[-1].envelope.id
        ids = {"i:execution.started:1": view.events[-1].seq}
        assert landed(ids, view.events, msg_id="i:execution.started:1", envelope_id=ours_never_stored) == (
            Landed.FOREIGN,
            view.events[-1].seq,
        )

    def test_nothing_under_our_message_id_is_absent(self) -> None:
        view = authorized(False)
        assert landed({}, view.events, msg_id="i:execution.started:1", envelope_id="nope") == (Landed.ABSENT, 0)


class TestStranded:
    def test_a_stranded_intent_waits_for_the_stage_after_the_last_it_reached(self) -> None:
        intent = sign_intent(new_intent("bot", "t", {}, deadline_seconds=1), KEY)
        assert waiting_for(view_of(intent)) == "authenticate"
        assert waiting_for(view_of(intent, ev.IntentAuthenticated(key_id="k"))) == "plan"
        assert waiting_for(authorized(False)) == "execute"

    def test_an_open_intent_past_its_deadline_and_the_grace_is_expired_by_the_sweep(self) -> None:
        intent = sign_intent(new_intent("bot", "t", {}, deadline_seconds=1), KEY)
        view = view_of(intent, ev.IntentAuthenticated(key_id="k"))
        [expired] = sweep_stage(view, LATER)
        assert isinstance(expired, ev.IntentExpired) and expired.stage == "plan"
        assert "no stage ended it" in expired.reason

    def test_nothing_is_swept_before_the_deadline_and_its_grace(self) -> None:
        intent = sign_intent(new_intent("bot", "t", {}, deadline_seconds=60), KEY)
        view = view_of(intent)
        assert sweep_stage(view, NOW) == []
        deadline = view.deadline
        assert deadline is not None
        assert sweep_stage(view, deadline + SWEEP_GRACE / 2) == []
        assert sweep_stage(view, deadline + SWEEP_GRACE * 2) != []

    def test_an_ended_intent_is_never_swept(self) -> None:
        done = ev.ExecutionSucceeded(attempt=1, result={}, result_digest="r", duration_ms=1)
        view = authorized(False, started(1), done, deadline_seconds=1)
        assert sweep_stage(view, LATER) == [] and sweep_execution(view, LATER) == []

    def test_an_unanswered_non_idempotent_call_is_the_executors_and_ends_outcome_unknown(self) -> None:
        view = authorized(False, started(1), deadline_seconds=1)
        assert sweep_stage(view, LATER) == []  # policy leaves it alone: the call may have run
        [unknown] = sweep_execution(view, LATER)
        assert isinstance(unknown, ev.ExecutionOutcomeUnknown) and unknown.attempt == 1

    def test_an_unanswered_idempotent_call_ends_expired(self) -> None:
        [expired] = sweep_execution(authorized(True, started(1), deadline_seconds=1), LATER)
        assert isinstance(expired, ev.IntentExpired) and expired.stage == "execute"

    def test_a_failed_attempt_waiting_for_its_retry_is_expired_by_the_stage_sweep(self) -> None:
        failed = ev.ExecutionAttemptFailed(attempt=1, code="c", reason="r", retry_after_ms=10)
        view = authorized(False, started(1), failed, deadline_seconds=1)
        assert sweep_execution(view, LATER) == []
        [expired] = sweep_stage(view, LATER)
        assert isinstance(expired, ev.IntentExpired) and expired.stage == "execute"

    def test_verify_names_each_stranded_intent(self) -> None:
        open_view = authorized(False, deadline_seconds=1)
        done = authorized(
            False,
            started(1),
            ev.ExecutionSucceeded(attempt=1, result={}, result_digest="r", duration_ms=1),
            deadline_seconds=1,
        )
        fresh = authorized(False, deadline_seconds=600)
        # Relative to the intents' own deadlines (NOW was taken at import, maybe minutes before).
        assert open_view.deadline is not None
        at = open_view.deadline + timedelta(seconds=30)
        findings = stranded_findings({"open": open_view, "done": done, "fresh": fresh}, at)
        assert [(f.code, f.intent_id) for f in findings] == [("stranded_intent", "open")]
        assert "still authorized past its deadline" in findings[0].message


class TestTheDeadlineRule:
    def test_a_stage_ends_an_intent_past_its_deadline_as_expired_at_that_stage(self) -> None:
        view = authorized(False, deadline_seconds=1)
        assert view.deadline is not None
        assert expiry(view, "execute", view.deadline - timedelta(seconds=1)) == []
        [expired] = expiry(view, "execute", view.deadline + timedelta(milliseconds=1))
        assert isinstance(expired, ev.IntentExpired) and expired.stage == "execute"
        assert "passed before execute" in expired.reason

    def test_an_ended_intent_never_expires(self) -> None:
        done = authorized(
            False,
            started(1),
            ev.ExecutionSucceeded(attempt=1, result={}, result_digest="r", duration_ms=1),
            deadline_seconds=1,
        )
        assert expiry(done, "execute", LATER) == []

    def test_the_sweeper_looks_at_a_submitted_intent_only_past_its_deadline_and_the_grace(self) -> None:
        view = authorized(False, deadline_seconds=1)
        assert view.submitted is not None and view.deadline is not None
        submitted = next(e for e in view.events if e.type == "intent.submitted")
        assert not past_due(submitted, view.deadline)
        assert not past_due(submitted, view.deadline + SWEEP_GRACE / 2)
        assert past_due(submitted, view.deadline + SWEEP_GRACE * 2)

    def test_a_deadline_that_does_not_parse_is_never_past_due_here(self) -> None:
        view = authorized(False, deadline_seconds=1)
        submitted = next(e for e in view.events if e.type == "intent.submitted")
        unparsable = msgspec.structs.replace(submitted.payload, deadline="tomorrow-ish")
        assert not past_due(dataclasses.replace(submitted, payload=unparsable), LATER)


class TestExecutorPastTheDeadline:
    def test_an_open_non_idempotent_attempt_past_the_deadline_is_outcome_unknown_not_expired(self) -> None:
        view = authorized(False, started(1), deadline_seconds=1)
        assert isinstance(decide_execution(view, now=LATER), ev.ExecutionOutcomeUnknown)

    def test_without_an_open_attempt_past_the_deadline_it_is_expired(self) -> None:
        expired = decide_execution(authorized(False, deadline_seconds=1), now=LATER)
        assert isinstance(expired, ev.IntentExpired) and expired.stage == "execute"

    def test_in_time_it_is_the_usual_next_step(self) -> None:
        assert decide_execution(authorized(False), now=NOW) == Invoke(attempt=1)


class TestSeedUrls:
    def test_several_comma_separated_urls_are_several_seeds(self) -> None:
        assert split_servers("nats://a:4222, nats://b:4222,,nats://c:4222 ") == [
            "nats://a:4222",
            "nats://b:4222",
            "nats://c:4222",
        ]

    def test_one_url_is_one_seed(self) -> None:
        assert WritSettings(nats_url="nats://127.0.0.1:4222").nats_servers() == ["nats://127.0.0.1:4222"]

    def test_no_url_at_all_is_refused(self) -> None:
        with pytest.raises(ValueError, match="no NATS URL"):
            split_servers(" , ")


class TestRedeliveryBackoff:
    def test_a_failing_handler_comes_again_later_each_time_and_at_most_every_30_seconds(self) -> None:
        delays = [retry_delay(n) for n in range(1, 12)]
        assert delays[0] == 0.5
        assert delays == sorted(delays)
        assert max(delays) == 30.0


class TestTheSweepersIndex:
    """The index reads each followed type on its own filter: a terminal event may come first."""

    def events(self, key: str) -> tuple[StoredEvent, StoredEvent]:
        intent = sign_intent(new_intent("bot", "t", {}, idempotency_key=key), KEY)
        failed = ev.ExecutionFailed(attempt=1, code="x", reason="y", retryable=False)
        return stored(intent, intent, 10), stored(failed, intent, 20)

    def test_a_submitted_intent_is_open_until_its_terminal_event(self) -> None:
        index, (submitted, ended) = OpenIntents(), self.events("a")
        index.note(submitted)
        assert list(index.open) == [submitted.envelope.intent_id]
        index.note(ended)
        assert index.open == {} and index.ended == {}

    def test_a_terminal_event_read_before_its_submitted_one_never_opens_the_intent(self) -> None:
        index, (submitted, ended) = OpenIntents(), self.events("b")
        index.note(ended)
        index.note(submitted)
        assert index.open == {} and index.ended == {}

    def test_an_orphan_terminal_is_forgotten_once_the_submitted_filter_is_past_it(self) -> None:
        index, (_submitted, ended) = OpenIntents(), self.events("c")
        index.note(ended)
        index.forget_ended_before(ended.seq)
        assert index.ended == {ended.envelope.intent_id: ended.seq}
        index.forget_ended_before(ended.seq + 1)
        assert index.ended == {}

    def test_each_filter_names_one_event_type_of_every_intent(self) -> None:
        assert type_filter("intent.submitted") == "writ.intent.*.*.submitted"
        assert type_filter("execution.succeeded") == "writ.intent.*.*.execution_succeeded"


class TestOneNamePerStage:
    """The fold, the views, the SDK and the gateway's progress name a stage from one table."""

    def test_the_fold_shows_each_stage_reached_by_its_name_in_the_table(self) -> None:
        intent = sign_intent(new_intent("bot", "t", {}), KEY)
        approval = ev.ApprovalRequested(
            approval_digest="d", policy_digest="p", policy_ids=[], group="ops", quorum=1, expires_at="x"
        )
        later: list[ev.Payload] = [
            ev.IntentAuthenticated(key_id="k"),
            ev.IntentPlanned(
                server="s", tool="t", tool_digest="d", args_digest="a", annotations=ev.ToolAnnotations(idempotent=True)
            ),
            approval,
            ev.IntentAuthorized(policy_digest="p", policy_ids=[]),
            started(1),
        ]
        shown = [view_of(intent, *later[:n]).status for n in range(len(later) + 1)]
        assert shown == list(ev.STAGE_STATUS.values())
        assert list(ev.STAGE_STATUS) == ["intent.submitted", *(ev.EVENT_TYPE[type(p)] for p in later)]


class TestConsumerState:
    """By default the stages' consumers live on one node and keep their progress on file; replicated
    on a cluster (WRIT_CONSUMER_REPLICAS=0), in memory (every replica keeps it)."""

    def test_by_default_a_consumer_lives_on_one_node_on_file(self) -> None:
        settings = WritSettings(stream_replicas=3)
        assert settings.consumer_replicas == 1 and not settings.consumer_state_in_memory

    @pytest.mark.parametrize(
        ("replicas", "state", "in_memory"),
        [(1, "auto", False), (3, "auto", True), (3, "file", False), (1, "memory", True)],
    )
    def test_auto_means_memory_only_when_the_consumer_is_replicated(
        self, replicas: int, state: str, in_memory: bool
    ) -> None:
        settings = WritSettings(stream_replicas=replicas, consumer_state=state, consumer_replicas=0)  # type: ignore[arg-type]
        assert settings.consumer_state_in_memory is in_memory

    @pytest.mark.parametrize(("consumer_replicas", "in_memory"), [(0, True), (3, True), (1, False)])
    def test_a_consumer_kept_on_one_node_keeps_its_progress_on_file(
        self, consumer_replicas: int, in_memory: bool
    ) -> None:
        """Memory on one node would be lost with that node's restart: the stage would replay the stream."""
        settings = WritSettings(stream_replicas=3, consumer_replicas=consumer_replicas)
        assert settings.consumer_state_in_memory is in_memory
