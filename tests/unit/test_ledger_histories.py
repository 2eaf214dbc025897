"""The ledger's intent histories: handed out only when every event of the intent up to the trigger
is known, forgotten at any gap in the stream. No broker, no I/O."""

from __future__ import annotations

import pytest
from test_rules import KEY, PRODUCER, started, stored

from writ.sdk import new_intent, sign_intent
from writ_common import events as ev
from writ_common.envelope import StoredEvent, decode, encode, make_envelope
from writ_ledger.histories import IntentHistories

pytestmark = pytest.mark.unit

PLANNED = ev.IntentPlanned(
    server="s", tool="t", tool_digest="d", args_digest="a", annotations=ev.ToolAnnotations(idempotent=False)
)


def intent(agent: str = "bot", key: str | None = None) -> ev.IntentSubmitted:
    return sign_intent(new_intent(agent, "t", {}, idempotency_key=key), KEY)


def at(payload: ev.Payload, agent_id: str, intent_id: str | None, seq: int) -> StoredEvent:
    env = make_envelope(payload, producer=PRODUCER, intent_id=intent_id, agent_id=agent_id)
    return decode(encode(env), seq=seq)


def fed(histories: IntentHistories, events: list[StoredEvent]) -> IntentHistories:
    for event in events:
        histories.feed(event.seq, event)
    return histories


class TestIntentHistories:
    def test_an_intent_seen_from_its_submission_is_known_up_to_its_trigger(self) -> None:
        one = intent()
        events = [stored(one, one, 1), stored(PLANNED, one, 2), stored(started(1), one, 3)]
        assert fed(IntentHistories(), events).history(events[-1]) == events

    def test_interleaved_intents_each_get_only_their_own_events(self) -> None:
        a, b = intent(), intent()
        events = [stored(a, a, 1), stored(b, b, 2), stored(PLANNED, a, 3), stored(PLANNED, b, 4)]
        histories = fed(IntentHistories(), events)
        assert histories.history(events[2]) == [events[0], events[2]]
        assert histories.history(events[3]) == [events[1], events[3]]

    def test_an_intent_first_seen_after_its_submission_is_not_known(self) -> None:
        one = intent()
        events = [stored(PLANNED, one, 7), stored(started(1), one, 8)]  # submitted was at 6, before us
        assert fed(IntentHistories(), events).history(events[-1]) is None

    def test_a_trigger_not_yet_fed_is_not_covered(self) -> None:
        one = intent()
        events = [stored(one, one, 1), stored(PLANNED, one, 2)]
        histories = fed(IntentHistories(), events[:1])
        assert histories.history(events[1]) is None

    def test_a_gap_in_the_stream_forgets_everything(self) -> None:
        one = intent()
        histories = fed(IntentHistories(), [stored(one, one, 1)])
        trigger = stored(PLANNED, one, 3)  # 2 never came: it may have been this intent's
        histories.feed(trigger.seq, trigger)
        assert histories.history(trigger) is None
        assert len(histories) == 0

    def test_a_step_back_forgets_everything(self) -> None:
        one = intent()
        events = [stored(one, one, 1), stored(PLANNED, one, 2)]
        histories = fed(IntentHistories(), events)
        histories.feed(2, events[1])  # a rolled-back batch applied again
        assert histories.history(events[1]) is None

    def test_messages_that_are_not_events_keep_the_stream_contiguous(self) -> None:
        one = intent()
        first, trigger = stored(one, one, 1), stored(PLANNED, one, 3)
        histories = IntentHistories()
        histories.feed(1, first)
        histories.feed(2, None)  # forged or undecodable: no event, but its sequence is accounted for
        histories.feed(3, trigger)
        assert histories.history(trigger) == [first, trigger]

    def test_a_second_submission_of_one_intent_is_not_vouched_for(self) -> None:
        one = intent(key="same")
        events = [stored(one, one, 1), stored(one, one, 2), stored(PLANNED, one, 3)]
        assert fed(IntentHistories(), events).history(events[-1]) is None

    def test_the_same_intent_id_under_another_agent_is_another_history(self) -> None:
        mine, theirs = intent("bot"), intent("eve")
        intent_id = stored(mine, mine, 1).envelope.intent_id
        events = [at(mine, "bot", intent_id, 1), at(theirs, "eve", intent_id, 2), at(PLANNED, "bot", intent_id, 3)]
        assert fed(IntentHistories(), events).history(events[-1]) == [events[0], events[2]]

    def test_a_receipted_intent_is_forgotten_and_the_oldest_beyond_the_bound_too(self) -> None:
        a, b, c = intent(), intent(), intent()
        events = [stored(a, a, 1), stored(b, b, 2), stored(c, c, 3)]
        histories = fed(IntentHistories(max_intents=2), events)
        assert histories.history(events[0]) is None  # evicted: read from the log instead
        histories.forget(events[1])
        assert histories.history(events[1]) is None
        assert histories.history(events[2]) == [events[2]]
