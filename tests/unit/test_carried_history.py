"""A trigger's carried history (``writ_common.carried``): believed only where the bus and the
server's own fence vouch for it, and then the same history a read would give."""

from __future__ import annotations

import base64

import pytest
from nats.aio.msg import Msg

from writ_common import carried, subjects
from writ_common import events as ev
from writ_common.bus import History, Record, history_of, msg_id
from writ_common.envelope import Producer, StoredEvent, decode, encode, make_envelope

pytestmark = pytest.mark.unit

AGENT, INTENT = "bot", "in-abc"
PLANNED = ev.IntentPlanned(server="s", tool="t", tool_digest="d", args_digest="a", annotations=ev.ToolAnnotations())


def record(payload: ev.Payload, seq: int, *, producer: str, intent: str = INTENT) -> Record:
    kind = ev.EVENT_TYPE[type(payload)]
    env = make_envelope(
        payload, producer=Producer(service=producer, instance="i", version="0"), intent_id=intent, agent_id=AGENT
    )
    return Record(seq, subjects.intent_subject(AGENT, intent, kind), msg_id(intent, kind), encode(env))


def submitted(seq: int = 1) -> Record:
    payload = ev.IntentSubmitted(
        agent_id=AGENT, idempotency_key="k", tool="s/t", arguments={}, issued_at="2026-01-01T00:00:00Z", nonce="n"
    )
    return record(payload, seq, producer="agent-sdk")


def authenticated(seq: int = 2, teams: list[str] | None = None) -> Record:
    return record(ev.IntentAuthenticated(key_id="k1", teams=teams or ["ops"]), seq, producer="identity")


def message(
    own: Record, *, fence: int, headers: dict[str, str] | None = None, fence_subject: str | None = None
) -> tuple[Msg, StoredEvent]:
    """``own`` as delivered: stored fenced on ``fence`` (the server kept the headers it was sent)."""
    sent = {
        "Nats-Msg-Id": own.msg_id,
        carried.FENCE: str(fence),
        carried.FENCE_SUBJECT: fence_subject or subjects.intent_filter(AGENT, INTENT),
        **(headers or {}),
    }
    msg = Msg(_client=None, subject=own.subject, data=own.data, headers=sent)  # type: ignore[arg-type]
    return msg, decode(own.data, seq=own.seq, subject=own.subject)


def same(a: History | None, b: History) -> None:
    assert a is not None
    assert [(e.seq, e.type, e.envelope.id) for e in a.events] == [(e.seq, e.type, e.envelope.id) for e in b.events]
    assert (a.last_seq, a.msg_ids, a.records) == (b.last_seq, b.msg_ids, b.records)


def test_a_stage_event_carries_the_history_it_was_fenced_on_and_reads_as_a_read_would() -> None:
    before = (submitted(1), authenticated(2))
    planned = record(PLANNED, 5, producer="registry")
    msg, trigger = message(planned, fence=2, headers=carried.header_for("intent.planned", before))
    same(carried.carried_history(msg, trigger), history_of([*before, planned]))


def test_a_submission_fenced_on_an_empty_intent_is_its_whole_history() -> None:
    first = submitted(7)
    msg, trigger = message(first, fence=0)
    same(carried.carried_history(msg, trigger), history_of([first]))


def test_an_agent_cannot_hand_a_stage_a_history() -> None:
    """A submission is the agent's: whatever history it carries is not believed, and with a fence
    past the intent's start it is not the whole history either (the stage reads)."""
    forged = carried.header_for("intent.authenticated", (authenticated(1, teams=["admins"]),))
    msg, trigger = message(submitted(2), fence=1, headers=forged)
    assert carried.carried_history(msg, trigger) is None
    # On an empty intent it is the whole history; the forged records are not part of it.
    msg, trigger = message(submitted(1), fence=0, headers=forged)
    history = carried.carried_history(msg, trigger)
    assert history is not None and [e.type for e in history.events] == ["intent.submitted"]


@pytest.mark.parametrize(
    "why",
    [
        "records end before the fence",
        "fence on another intent",
        "a record of another intent",
        "records out of order",
        "not base64",
        "not records",
        "no header",
        "no fence",
    ],
)
def test_a_history_that_is_not_the_one_fenced_on_is_not_believed(why: str) -> None:
    before: tuple[Record, ...] = (submitted(1), authenticated(2))
    fence, fence_subject = 2, None
    headers = carried.header_for("intent.planned", before)
    if why == "records end before the fence":
        fence = 3  # something was stored after what the records hold
    elif why == "fence on another intent":
        fence_subject = subjects.intent_filter(AGENT, "in-other")
    elif why == "a record of another intent":
        headers = carried.header_for(
            "intent.planned",
            (
                submitted(1),
                record(ev.IntentAuthenticated(key_id="k1"), 2, producer="identity", intent="in-other"),
            ),
        )
    elif why == "records out of order":
        headers = carried.header_for("intent.planned", (authenticated(2), submitted(1)))
        fence = 1
    elif why == "not base64":
        headers = {carried.HEADER: "%%%"}
    elif why == "not records":
        headers = {carried.HEADER: base64.b64encode(b'{"a": 1}').decode()}
    elif why == "no header":
        headers = {}
    msg, trigger = message(
        record(PLANNED, 5, producer="registry"), fence=fence, headers=headers, fence_subject=fence_subject
    )
    if why == "no fence":
        assert msg.headers is not None
        del msg.headers[carried.FENCE]
    assert carried.carried_history(msg, trigger) is None


def test_only_a_later_stage_s_trigger_carries_and_only_what_is_worth_carrying() -> None:
    before = (submitted(1),)
    assert carried.HEADER in carried.header_for("intent.authenticated", before)
    assert carried.header_for("execution.succeeded", before) == {}  # nobody folds on it
    assert carried.header_for("intent.planned", ()) == {}
    big = record(
        ev.IntentSubmitted(
            agent_id=AGENT,
            idempotency_key="k",
            tool="s/t",
            arguments={"blob": "x" * carried.MAX_HEADER_BYTES},
            issued_at="2026-01-01T00:00:00Z",
            nonce="n",
        ),
        1,
        producer="agent-sdk",
    )
    assert carried.header_for("intent.authenticated", (big,)) == {}  # the next stage reads it instead
