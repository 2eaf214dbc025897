"""Read-your-writes and nothing stranded, against a real nats-server: a stage never takes a history
that misses its trigger for "nothing to do", an append's lost answer is resolved by looking,
a duplicate ack counts only for our own event, and an intent left behind by a stage ends expired
with its receipt once its deadline passes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from typing import Any

import msgspec
import nats.errors
import pytest
from direct_gets import resumed_index
from inprocess import Spine
from nats.js.api import AckPolicy, ConsumerConfig

from waiting import eventually
from writ.synthetic import producer_of
from writ_common import bus, subjects
from writ_common import events as ev
from writ_common.bus import StaleAppend, append, read_history
from writ_common.busauth import durable_of
from writ_common.envelope import Envelope, StoredEvent, make_envelope
from writ_common.fold import IntentView
from writ_common.ids import derive_intent_id
from writ_common.intent_consumer import Redeliver
from writ_common.sweeper import (
    CHECKPOINT_KEY,
    FOLLOWED_TYPES,
    HELD_KEY,
    RESUME_KEY,
    SUBMITTED,
    Checkpoint,
    OpenIntents,
    ResumePoint,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def hand_made(spine: Spine, intent_id: str, payload: ev.Payload) -> Envelope:
    return make_envelope(payload, producer=producer_of(payload), intent_id=intent_id, agent_id=spine.agent.agent_id)


def failed_attempt(attempt: int) -> ev.ExecutionAttemptFailed:
    return ev.ExecutionAttemptFailed(attempt=attempt, code="test", reason="test", retry_after_ms=1)


async def authenticated_intent(spine: Spine) -> tuple[str, StoredEvent]:
    """A hand-made intent (no ``submitted``, so no service acts on it) and its one event."""
    intent_id = f"in-fresh{uuid.uuid4().hex[:12]}"
    await append(spine.js, hand_made(spine, intent_id, ev.IntentAuthenticated(key_id="seed")), expected_last_seq=0)
    [trigger] = (await read_history(spine.nc, spine.agent.agent_id, intent_id)).events
    return intent_id, trigger


async def test_a_history_read_through_the_leader_stops_at_the_intents_last_message(spine: Spine) -> None:
    """The leader's read (the fallback when replicas are behind) gives the history a Direct Get
    gives, and never asks past the intent's last message: that last request, finding nothing,
    made the server look through the whole log after the intent."""
    done = await spine.agent.call("time/get_current_time", {"timezone": "UTC"}, timeout=30)
    direct = await read_history(spine.nc, spine.agent.agent_id, done.intent_id)
    where = subjects.intent_filter(spine.agent.agent_id, done.intent_id)
    asked: list[dict[str, Any]] = []

    async def on_request(msg: Any) -> None:
        body = json.loads(msg.data or b"{}")
        if where in (body.get("next_by_subj"), body.get("last_by_subj")):  # this intent's, no one else's
            asked.append(body)

    watch = await spine.nc.subscribe(f"$JS.API.STREAM.MSG.GET.{subjects.INTENTS_STREAM}", cb=on_request)
    try:
        through_leader = await bus.leader_history(spine.js, spine.agent.agent_id, done.intent_id)
        await spine.nc.flush()
        await asyncio.sleep(0.1)  # the watch's callback runs in its own task
    finally:
        await watch.unsubscribe()
    assert [r.seq for r in through_leader.records] == [r.seq for r in direct.records]
    assert through_leader.last_seq == direct.last_seq
    assert len(asked) == len(direct.records) + 1  # its last message, then each one
    assert all(int(body.get("seq", 0)) <= direct.last_seq for body in asked)
    missing = await bus.leader_history(spine.js, spine.agent.agent_id, f"in-none{uuid.uuid4().hex[:12]}")
    assert not missing.records and missing.last_seq == 0


async def test_a_history_that_misses_the_trigger_is_read_again_then_redelivered_never_acked(
    spine: Spine, monkeypatch: pytest.MonkeyPatch
) -> None:
    intent_id, trigger = await authenticated_intent(spine)
    leader_reads = 0
    leader_history = bus.leader_history

    async def counting(*args: Any) -> bus.History:
        nonlocal leader_reads
        leader_reads += 1
        return await leader_history(*args)

    monkeypatch.setattr(bus, "leader_history", counting)
    decided: list[IntentView] = []

    async def decide(view: IntentView) -> list[ev.Payload]:
        decided.append(view)
        return []  # what a stage says when its trigger is not in the history: "nothing to do"

    registry = spine.services[1]
    # The trigger as a replica behind it would not have it: a sequence past what any read returns,
    # and an event id the history does not hold.
    ahead = dataclasses.replace(trigger, seq=trigger.seq + 1000)
    with pytest.raises(Redeliver):
        await registry.run_stage(ahead, "plan", decide)
    unseen = StoredEvent(
        envelope=msgspec.structs.replace(trigger.envelope, id="01" + "Z" * 24),
        payload=trigger.payload,
        seq=trigger.seq,
        subject=trigger.subject,
    )
    with pytest.raises(Redeliver):
        await registry.run_stage(unseen, "plan", decide)
    assert decided == [], "no decision on a history behind the trigger"
    assert leader_reads == 2, "the stream leader is asked after the direct reads came back behind"

    # The trigger as it really is: decided on at once, from a history that holds it.
    assert await registry.run_stage(trigger, "plan", decide) == []
    assert len(decided) == 1 and decided[0].events[-1].envelope.id == trigger.envelope.id
    assert leader_reads == 2
    assert [e.type for e in (await read_history(spine.nc, spine.agent.agent_id, intent_id)).events] == [
        "intent.authenticated"
    ]


async def test_a_lost_answer_is_resolved_by_looking_for_our_own_event(
    spine: Spine, monkeypatch: pytest.MonkeyPatch
) -> None:
    intent_id, trigger = await authenticated_intent(spine)
    js = spine.js
    publish = js.publish
    sends: list[str] = []

    async def stored_then_lost(subject: str, payload: bytes = b"", **kwargs: Any) -> Any:
        sends.append(subject)
        if len(sends) == 1:
            await publish(subject, payload, **kwargs)  # the server stores it ...
            raise nats.errors.TimeoutError  # ... and the answer never comes
        return await publish(subject, payload, **kwargs)

    monkeypatch.setattr(js, "publish", stored_then_lost)
    # Events no service acts on, so the intent holds only what this test appends.
    planned = hand_made(spine, intent_id, failed_attempt(1))
    ack = await append(js, planned, expected_last_seq=trigger.seq, occurrence=1)
    assert len(sends) == 1, "found stored by looking: not sent again"
    history = await read_history(spine.nc, spine.agent.agent_id, intent_id)
    assert [e.envelope.id for e in history.events] == [trigger.envelope.id, planned.id], [
        (e.type, e.envelope.id, e.envelope.producer) for e in history.events
    ]
    assert ack.seq == history.last_seq

    # Lost before the server stored it: looking finds nothing, so it is sent again, once.
    sends.clear()

    async def lost_unsent(subject: str, payload: bytes = b"", **kwargs: Any) -> Any:
        sends.append(subject)
        if len(sends) == 1:
            raise nats.js.errors.NoStreamResponseError
        return await publish(subject, payload, **kwargs)

    monkeypatch.setattr(js, "publish", lost_unsent)
    second = hand_made(spine, intent_id, failed_attempt(2))
    ack = await append(js, second, expected_last_seq=history.last_seq, occurrence=2)
    assert len(sends) == 2
    after = await read_history(spine.nc, spine.agent.agent_id, intent_id)
    assert [e.envelope.id for e in after.events] == [trigger.envelope.id, planned.id, second.id]
    assert ack.seq == after.last_seq


async def test_a_duplicate_ack_counts_only_for_our_own_event(spine: Spine) -> None:
    intent_id, trigger = await authenticated_intent(spine)
    first = hand_made(spine, intent_id, failed_attempt(1))
    stored = await append(spine.js, first, expected_last_seq=trigger.seq, occurrence=1)
    # The same envelope again (a re-sent append): a duplicate of ours is our append.
    again = await append(spine.js, first, expected_last_seq=stored.seq, occurrence=1)
    assert (again.seq, again.duplicate) == (stored.seq, True)
    # Another event under the same message id (an earlier run's, e.g. its execution.started):
    # the server acks it as a duplicate, and it is never taken for ours.
    other = hand_made(spine, intent_id, failed_attempt(1))
    with pytest.raises(StaleAppend):
        await append(spine.js, other, expected_last_seq=stored.seq, occurrence=1)


async def test_an_intent_no_stage_moves_on_ends_expired_with_its_receipt(
    spine: Spine, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = spine.services[1]
    run_stage = registry.run_stage
    mine: set[str] = set()

    async def takes_it_for_nothing(trigger: StoredEvent, stage: Any, decide: Any) -> list[int]:
        # What a stale read did: the stage "finds nothing to do" and the trigger is acked.
        if trigger.envelope.intent_id in mine:
            return []
        return await run_stage(trigger, stage, decide)

    monkeypatch.setattr(registry, "run_stage", takes_it_for_nothing)
    # A real, signed intent: identity authenticates it, then nothing plans it.
    key = f"stranded-{uuid.uuid4().hex[:8]}"
    submission_id = derive_intent_id(spine.agent.agent_id, key)
    mine.add(submission_id)
    submitted = await spine.agent.submit(
        "time/get_current_time", {"timezone": "UTC"}, idempotency_key=key, deadline_seconds=2.0
    )
    assert submitted.intent_id == submission_id
    receipt = await spine.agent.receipt(submission_id, 30)
    assert (receipt.status, receipt.stage) == ("expired", "plan"), receipt.reason
    assert "no stage ended it" in receipt.reason
    history = await read_history(spine.nc, spine.agent.agent_id, submission_id)
    assert [e.type for e in history.events] == ["intent.submitted", "intent.authenticated", "intent.expired"]


async def test_a_service_given_several_seeds_connects_through_one_that_is_up(nats_server: str, tmp_path: Any) -> None:
    from writ.runtime.processes import free_port
    from writ_common.service import Service
    from writ_common.settings import WritSettings

    down = f"nats://127.0.0.1:{free_port()}"  # a node that is down: nothing listens there
    settings = WritSettings(data_dir=tmp_path, nats_url=f"{down}, {nats_server}", instance="seeds")
    svc = Service("identity", settings)
    await svc.broker.connect()
    try:
        assert svc.nc.is_connected
        assert svc.nc.connected_url is not None
        assert svc.nc.connected_url.port == int(nats_server.rsplit(":", 1)[1])
    finally:
        await svc.broker.stop()


async def test_the_sweeper_asks_for_a_type_not_seen_lately_from_the_head_it_read_to(spine: Spine) -> None:
    """A terminal type absent from the log for a while (here: expired, rejected...) is asked for
    from the stream's head as of the last read, not from its last occurrence: otherwise the
    server looks through every event stored since, on every tick, at a cost growing with the log.
    An intent submitted and ended is not left open."""
    index = OpenIntents()
    await index.catch_up(spine.nc)
    receipt = await spine.agent.call("time/get_current_time", {"timezone": "UTC"}, timeout=30)  # ends (denied here)
    for _ in range(3):
        await authenticated_intent(spine)  # traffic of no followed type
    head = (await spine.js.stream_info(subjects.INTENTS_STREAM)).state.last_seq
    await index.catch_up(spine.nc)
    for event_type in FOLLOWED_TYPES:
        if event_type != SUBMITTED:
            assert index.position(event_type) == head + 1, event_type
    assert receipt.intent_id not in index.open  # submitted, then ended: never left open


async def test_a_history_read_never_asks_for_more_than_the_intent_holds(spine: Spine) -> None:
    """Reading an intent's history asks the server for its first event, then for exactly as many
    as the server says remain: a batch larger than that makes the server look through every
    message stored after the intent's last one (for an old intent, the whole log since)."""
    receipt = await spine.agent.call("time/get_current_time", {"timezone": "UTC"}, timeout=30)
    where = subjects.intent_filter(spine.agent.agent_id, receipt.intent_id)
    asked: list[int] = []

    async def on_request(msg: Any) -> None:
        body = json.loads(msg.data or b"{}")
        if body.get("next_by_subj") == where:
            asked.append(int(body.get("batch", 1)))

    watch = await spine.nc.subscribe(f"$JS.API.DIRECT.GET.{subjects.INTENTS_STREAM}", cb=on_request)
    try:
        await spine.nc.flush()
        history = await read_history(spine.nc, spine.agent.agent_id, receipt.intent_id)
        for _ in range(20):  # the watch's callback runs in its own task: let it catch up
            if sum(asked) >= len(history.records):
                break
            await asyncio.sleep(0.05)
    finally:
        await watch.unsubscribe()
    assert history.events and history.events[-1].type in ev.TERMINAL_TYPES
    assert asked == [1, len(history.records) - 1]


async def test_a_sweeper_checkpoint_is_kept_in_its_consumer_and_leaves_the_consumer_as_it_was(spine: Spine) -> None:
    """The checkpoint lives in the metadata of the service's own durable consumer: written as an
    update of that consumer (its filter and settings as they were), read back at the next start."""
    durable = f"writ-checkpoint-{uuid.uuid4().hex[:8]}"
    config = ConsumerConfig(
        durable_name=durable, name=durable, ack_policy=AckPolicy.EXPLICIT, filter_subject="writ.intent.*.*.planned"
    )
    await spine.js.add_consumer(subjects.INTENTS_STREAM, config)
    try:
        checkpoint = Checkpoint(lambda: spine.nc, durable)
        assert await checkpoint.read() is None  # none yet: the index reads from the first message
        assert checkpoint.due(42, time.monotonic())
        await checkpoint.write(ResumePoint(42, (7, 9)))  # two intents open below it, named
        assert not checkpoint.due(43, time.monotonic())  # at most one a minute
        assert await Checkpoint(lambda: spine.nc, durable).read() == ResumePoint(42, (7, 9))
        info = await spine.js.consumer_info(subjects.INTENTS_STREAM, durable)
        assert (info.config.metadata or {})[CHECKPOINT_KEY] == "7"  # what a Writ before names read: the oldest
        await checkpoint.write(ResumePoint(50))
        assert await Checkpoint(lambda: spine.nc, durable).read() == ResumePoint(50)
        # A checkpoint written before points named intents: the oldest open intent, none named.
        old = {k: v for k, v in (info.config.metadata or {}).items() if not k.startswith("_nats.")}
        old = {CHECKPOINT_KEY: "31"} | {k: v for k, v in old.items() if k not in (CHECKPOINT_KEY, RESUME_KEY, HELD_KEY)}
        await spine.js.add_consumer(subjects.INTENTS_STREAM, info.config.evolve(metadata=old))
        assert await Checkpoint(lambda: spine.nc, durable).read() == ResumePoint(31)
        info = await spine.js.consumer_info(subjects.INTENTS_STREAM, durable)
        assert info.config.filter_subject == "writ.intent.*.*.planned"
        assert info.config.ack_policy == AckPolicy.EXPLICIT
    finally:
        await spine.js.delete_consumer(subjects.INTENTS_STREAM, durable)
    assert await Checkpoint(lambda: spine.nc, durable).read() is None  # a consumer made again starts afresh


async def test_a_sweeper_resuming_from_its_checkpoint_reads_nothing_below_it(spine: Spine) -> None:
    """Below the checkpoint every intent had ended: a restarted sweeper asks the server for
    nothing there, and reads on from it as before (an intent after it is read, and ends there)."""
    before = await spine.agent.call("time/get_current_time", {"timezone": "UTC"}, timeout=30)
    before_submitted = (await read_history(spine.nc, spine.agent.agent_id, before.intent_id)).events[0]
    open_from = (await spine.js.stream_info(subjects.INTENTS_STREAM)).state.last_seq + 1
    after = await spine.agent.call("time/get_current_time", {"timezone": "UTC"}, timeout=30)
    after_submitted = (await read_history(spine.nc, spine.agent.agent_id, after.intent_id)).events[0]
    index, bodies = await resumed_index(spine.nc, ResumePoint(open_from))
    followed = f"{subjects.INTENT_PREFIX}.*.*."
    asked = [int(body.get("seq", 0)) for body in bodies if str(body.get("next_by_subj", "")).startswith(followed)]
    assert before_submitted.seq < open_from <= after_submitted.seq
    assert asked and min(asked) >= open_from  # one read per followed type, none from the start
    assert index.position(SUBMITTED) > after_submitted.seq  # read on from the checkpoint
    assert after.intent_id not in index.open and before.intent_id not in index.open


@pytest.mark.parametrize("service", ["policy", "executor"])
async def test_each_sweeping_service_writes_its_checkpoint_into_its_own_consumer(spine: Spine, service: str) -> None:
    """Policy and the executor sweep; each writes its checkpoint into its own consumer through its
    own bus user (the first at its first sweep, then at most one a minute), and no intent the log
    shows open lies below it but those it names."""

    checkpoint = Checkpoint(lambda: spine.nc, durable_of(service))
    point = await eventually(checkpoint.read, 15, f"{service}'s sweeper checkpoint")
    open_from = point.start
    head = (await spine.js.stream_info(subjects.INTENTS_STREAM)).state.last_seq
    assert 1 <= open_from <= head + 1
    below = await bus.direct_get_batch(
        spine.nc, subjects.INTENTS_STREAM, subjects.intents_of_type(SUBMITTED), limit=open_from
    )
    for msg in below:
        submitted = bus.stored(msg)
        if submitted.seq >= open_from:
            break
        if submitted.seq in point.held:
            continue  # named: a restart reads it by itself
        history = await read_history(spine.nc, submitted.envelope.agent_id or "", submitted.envelope.intent_id or "")
        assert any(e.type in ev.TERMINAL_TYPES for e in history.events), (
            f"{submitted.envelope.intent_id} lies below {service}'s checkpoint {open_from} and is open"
        )
