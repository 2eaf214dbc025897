"""Appending to and reading from the log: the fenced append, an intent's history, dead letters."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import PubAck, RawStreamMsg
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServerError, ServiceUnavailableError

from writ_common import subjects, topology
from writ_common.consistency import Landed, covers, landed
from writ_common.envelope import Envelope, StoredEvent, UndecodableEvent, decode, encode
from writ_common.errors import CodedError
from writ_common.tracing import inject_headers

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE = 10071
STREAM_LIMIT_REACHED = 10077  # max bytes, or max messages on one subject (discard NEW)
MESSAGE_TOO_LARGE = 10054


class StorageRefused(CodedError):
    """The stream refused the append to stay within its limits (``storage_full``,
    ``message_too_large``): nothing was written, and nothing else was dropped to make room."""


def refusal(exc: APIError, stream: str) -> StorageRefused | None:
    """The storage refusal ``exc`` stands for, in words a person can act on; None if it is none."""
    if exc.err_code == STREAM_LIMIT_REACHED:
        return StorageRefused(
            "storage_full",
            f"{stream} refused the write ({exc.description}); nothing was written or dropped. An operator frees"
            " space or raises the limit (WRIT_INTENTS_MAX_BYTES / WRIT_LEDGER_MAX_BYTES; README, Sizing)",
        )
    if exc.err_code == MESSAGE_TOO_LARGE:
        return StorageRefused("message_too_large", f"{stream} refused the write: {exc.description}")
    return None


# The fence of an intent append, as sent and as the server keeps it with the stored message.
FENCE_HEADER = "Nats-Expected-Last-Subject-Sequence"
FENCE_SUBJECT_HEADER = "Nats-Expected-Last-Subject-Sequence-Subject"
# Pauses before each further Direct Get of a history that is behind its trigger (any replica may
# answer; a follower is typically a millisecond or two behind the leader on a LAN), then the stream
# leader is asked. Short first: on R3 about one read in fifty meets a replica a beat behind.
READ_PAUSES = (0.002, 0.008, 0.03)
DIRECT_READS = len(READ_PAUSES)
SETTLE_SECONDS = 30.0  # how long an append whose answer was lost keeps looking before giving up
# What a publish or a leader read raises when its answer is lost (the server may still have
# stored the message): timeouts, a dropped or reconnecting connection, no stream leader (503).
ANSWER_LOST: tuple[type[Exception], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    NoStreamResponseError,
    ServiceUnavailableError,
    ServerError,
    asyncio.TimeoutError,
)


class StaleAppend(Exception):
    """The intent moved on since we read it: another writer appended first. Re-fold and decide."""


class HistoryBehind(Exception):
    """No read, not even the stream leader's, reached the event that made us read: decide later."""


class AppendUnresolved(Exception):
    """An append's answer was lost and looking did not tell, in the time allowed, whether it is
    stored. The event may or may not be there: the caller must look again before concluding."""


@dataclass(frozen=True, slots=True)
class Record:
    """One stored message of an intent as read: what a history is decoded from (and what a stage
    carries forward to the next one, :mod:`writ_common.carried`)."""

    seq: int
    subject: str
    msg_id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class History:
    """An intent's decoded events in order; ``last_seq`` is the fence for the next append;
    ``msg_ids`` maps each message's ``Nats-Msg-Id`` to its sequence (admitted or not);
    ``records`` are the messages it was decoded from, forged ones included."""

    events: list[StoredEvent]
    last_seq: int
    msg_ids: dict[str, int] = field(default_factory=dict)
    records: tuple[Record, ...] = ()


def msg_id(intent_id: str, event_type: str, occurrence: int | str = 0) -> str:
    """``Nats-Msg-Id`` of an intent event: a re-run handler cannot append it twice.

    ``occurrence`` tells apart events of one type that may legitimately repeat: the execution
    attempt's number, or for approval decisions ``approver@position`` (who, and at which point of
    the history they decided).
    """
    return f"{intent_id}:{event_type}:{occurrence}"


async def append(
    js: JetStreamContext,
    envelope: Envelope,
    *,
    expected_last_seq: int,
    occurrence: int | str = 0,
    headers: dict[str, str] | None = None,
    settle: float | None = SETTLE_SECONDS,
    data: bytes | None = None,
) -> PubAck:
    """Append an intent event, fenced and deduplicated; a lost answer is resolved by looking.

    A duplicate ack means something is stored under our ``Nats-Msg-Id`` (on R3 even when our
    fence is stale): it counts as our append only if the stored event is our very envelope,
    else the intent moved on. When the answer is lost (timeout, dropped connection, no stream
    leader), the intent's history is read from the stream leader: our envelope there means it
    landed; another event under our message id means the intent moved on; nothing means it is
    sent again, same id and fence, and the answer judged the same way.

    Args:
        js: JetStream context.
        envelope: the event; ``agent_id`` and ``intent_id`` name the intent.
        expected_last_seq: stream sequence of the intent's last event as we folded it (0: none).
        occurrence: part of ``Nats-Msg-Id`` for events that may legitimately repeat (:func:`msg_id`).
        headers: extra headers; ``traceparent`` of the current span is added.
        data: ``envelope`` already encoded (by a caller that keeps the bytes), else encoded here.
        settle: seconds to keep looking after a lost answer; None: neither look nor judge
            duplicates (an agent's submission: a duplicate is the same intent by construction,
            and an agent may not read through the stream leader).

    Raises:
        StaleAppend: the server refused the append because the intent has moved on, or what
            holds our message id is not our event.
        StorageRefused: the intents stream is full (``storage_full``) or the event too large.
        AppendUnresolved: the answer was lost and ``settle`` seconds of looking did not tell.
    """
    assert envelope.agent_id and envelope.intent_id, "an intent event names its agent and intent"
    ident = msg_id(envelope.intent_id, envelope.type, occurrence)
    all_headers = inject_headers(dict(headers or {}))
    all_headers["Nats-Msg-Id"] = ident
    all_headers[FENCE_HEADER] = str(expected_last_seq)
    all_headers[FENCE_SUBJECT_HEADER] = subjects.intent_filter(envelope.agent_id, envelope.intent_id)
    subject = subjects.intent_subject(envelope.agent_id, envelope.intent_id, envelope.type)
    if data is None:
        data = encode(envelope)
    if settle is None:
        try:
            return await js.publish(subject, data, headers=all_headers)
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise StaleAppend(str(exc.description)) from exc
            if (refused := refusal(exc, subjects.INTENTS_STREAM)) is not None:
                raise refused from exc
            raise
    until = time.monotonic() + settle
    sent_before = False
    while True:
        ack = await _publish_once(js, subject, data, all_headers, sent_before=sent_before)
        if ack is not None:
            return ack
        sent_before = True
        history = await _leader_history_until(js, envelope.agent_id, envelope.intent_id, until, ident)
        state, seq = landed(history.msg_ids, history.events, msg_id=ident, envelope_id=envelope.id)
        if state is Landed.OURS:
            return PubAck(stream=subjects.INTENTS_STREAM, seq=seq, duplicate=True)
        if state is Landed.FOREIGN:
            raise StaleAppend(f"{ident} is already stored at {seq}, but not as our event: the intent moved on")
        if time.monotonic() > until:
            raise AppendUnresolved(f"{ident}: not stored, and the bus did not take it within {settle:g}s")
        log.info("%s: not stored after a lost answer; sending it again", ident)


async def _publish_once(
    js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str], *, sent_before: bool
) -> PubAck | None:
    """One publish: its fresh ack, or None when we must look (answer lost, duplicate, or a
    refused fence after an earlier send, which our own first send may have moved)."""
    try:
        ack = await js.publish(subject, data, headers=headers)
    except APIError as exc:
        # A refusal to stay within the stream's limits is an answer (nothing stored), not a lost one.
        if (refused := refusal(exc, subjects.INTENTS_STREAM)) is not None:
            raise refused from exc
        if exc.err_code == WRONG_LAST_SEQUENCE:
            if not sent_before:
                raise StaleAppend(str(exc.description)) from exc
            return None
        if not isinstance(exc, ANSWER_LOST):
            raise
        log.warning("%s: the answer to the append was lost (%s); looking", headers["Nats-Msg-Id"], type(exc).__name__)
        await asyncio.sleep(0.05)
        return None
    except ANSWER_LOST as exc:
        log.warning("%s: the answer to the append was lost (%s); looking", headers["Nats-Msg-Id"], type(exc).__name__)
        await asyncio.sleep(0.05)
        return None
    return None if ack.duplicate else ack


async def _leader_history_until(
    js: JetStreamContext, agent_id: str, intent_id: str, until: float, ident: str
) -> History:
    pause = 0.1
    while True:
        try:
            return await leader_history(js, agent_id, intent_id)
        except ANSWER_LOST as exc:
            if time.monotonic() > until:
                raise AppendUnresolved(f"{ident}: the answer was lost and the stream could not be read") from exc
            await asyncio.sleep(pause)
            pause = min(1.0, pause * 2)


async def append_control(
    js: JetStreamContext,
    subject: str,
    envelope: Envelope,
    *,
    message_id: str,
    expected_last_subject_seq: int | None = None,
) -> PubAck:
    """Append a control event (agents, servers, policies), deduplicated by ``message_id``.

    Raises:
        StaleAppend: ``expected_last_subject_seq`` was given and the subject has moved on.
    """
    headers = {"Nats-Msg-Id": message_id}
    if expected_last_subject_seq is not None:
        headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_subject_seq)
    try:
        return await js.publish(subject, encode(envelope), headers=inject_headers(headers))
    except APIError as exc:
        if exc.err_code == WRONG_LAST_SEQUENCE:
            raise StaleAppend(str(exc.description)) from exc
        raise


class _Replies:
    """One wildcard inbox subscription per connection for every Direct Get it asks: a read is one
    publish and its replies, not a SUB and an UNSUB around it (each of which also makes the
    server rebuild its subject-match cache)."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._tokens = itertools.count(1)
        self._waiting: dict[str, asyncio.Queue[Msg]] = {}
        self._sub: Subscription | None = None
        self._subscribing = asyncio.Lock()

    async def open(self) -> tuple[str, asyncio.Queue[Msg]]:
        """A fresh reply subject and the queue its replies arrive on; :meth:`close` it after."""
        if self._sub is None:
            async with self._subscribing:
                if self._sub is None:
                    self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._deliver)
        token = str(next(self._tokens))
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._waiting[token] = queue
        return f"{self._prefix}.{token}", queue

    def close(self, reply: str) -> None:
        self._waiting.pop(reply.rpartition(".")[2], None)  # late replies to it are dropped

    async def _deliver(self, msg: Msg) -> None:
        queue = self._waiting.get(msg.subject.rpartition(".")[2])
        if queue is not None:
            queue.put_nowait(msg)


_REPLIES: weakref.WeakKeyDictionary[Client, _Replies] = weakref.WeakKeyDictionary()


def _replies(nc: Client) -> _Replies:
    found = _REPLIES.get(nc)
    if found is None:
        found = _REPLIES[nc] = _Replies(nc)
    return found


async def direct_get_batch(
    nc: Client,
    stream: str,
    subject_filter: str,
    *,
    start_seq: int = 1,
    batch: int = 256,
    timeout: float = 5.0,
    limit: int | None = None,
    start_time: datetime | None = None,
) -> list[Msg]:
    """All messages on ``subject_filter`` from ``start_seq`` (at least ``limit`` of them when there
    are that many: a page), via batched Direct Get (one round trip per ``batch`` messages).
    ``start_time``: instead of ``start_seq``, from the first message stored at or after it.

    Raises:
        nats.errors.TimeoutError: a batch's replies stopped for ``timeout`` seconds.
    """
    out: list[Msg] = []
    seq = start_seq
    since = start_time.astimezone(UTC).isoformat().replace("+00:00", "Z") if start_time else None
    while True:
        request: dict[str, object] = {"next_by_subj": subject_filter, "batch": batch}
        if since is not None and not out:
            request["start_time"] = since  # the server takes a time or a sequence, not both
        else:
            request["seq"] = seq
        msgs, more = await _direct_get(nc, stream, request, timeout)
        out += msgs
        if msgs:
            seq = int((msgs[-1].headers or {})["Nats-Sequence"]) + 1
        if not more or (limit is not None and len(out) >= limit):
            return out


MULTI_LAST_SUBJECTS = 128  # subjects per multi_last request (the server caps how many it takes)


async def direct_get_last_of(nc: Client, stream: str, subjects_: Sequence[str], *, timeout: float = 5.0) -> list[Msg]:
    """The last message stored on each of ``subjects_`` (none for a subject with none), in stream
    order within each request: one batched Direct Get (``multi_last``) per 128 subjects, where a
    read per subject would be one round trip each.

    Raises:
        nats.errors.TimeoutError: a request's replies stopped for ``timeout`` seconds.
    """
    out: list[Msg] = []
    for i in range(0, len(subjects_), MULTI_LAST_SUBJECTS):
        chunk = list(subjects_[i : i + MULTI_LAST_SUBJECTS])
        msgs, _ = await _direct_get(nc, stream, {"multi_last": chunk, "batch": len(chunk)}, timeout)
        out += msgs
    return out


async def _direct_get(nc: Client, stream: str, request: dict[str, object], timeout: float) -> tuple[list[Msg], bool]:
    """One batched Direct Get: its messages, and whether more match than the batch held."""
    replies = _replies(nc)
    inbox, queue = await replies.open()
    out: list[Msg] = []
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        while True:
            try:
                msg = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError as exc:
                raise nats.errors.TimeoutError from exc
            headers = msg.headers or {}
            status = headers.get("Status")
            if status is not None:
                # 204: end of this batch (the server may cap it below ``batch``), and how many
                # matching messages remain; 404: nothing (more) found.
                return out, status == "204" and int(headers.get("Nats-Num-Pending", "0")) > 0
            out.append(msg)
    finally:
        replies.close(inbox)


async def pages_after(
    nc: Client, stream: str, subject_filter: str, position: int, *, page: int = 1024
) -> AsyncIterator[list[Msg]]:
    """Following a stream: the messages on ``subject_filter`` stored after sequence ``position``,
    in stream order, a page (about ``page`` messages, one Direct Get round trip) at a time, up to
    the stream's head. Gap-free: a replica that is behind answers with a shorter prefix, never a
    gap, so a follower that keeps its position past what it applied misses nothing. Every
    follower of the log reads through here and keeps its position where it belongs (in memory, in
    the views file, per event type).

    Raises:
        nats.errors.TimeoutError: the stream stopped answering; a next call resumes at the position.
    """
    while True:
        msgs = await direct_get_batch(nc, stream, subject_filter, start_seq=position + 1, batch=page, limit=page)
        if not msgs:
            return
        yield msgs
        position = int((msgs[-1].headers or {})["Nats-Sequence"])
        if len(msgs) < page:
            return


def stored(msg: Msg) -> StoredEvent:
    """Decode a Direct Get reply or a consumed message into a :class:`StoredEvent`, believed only
    where its subject, type and producer agree with the topology (:func:`topology.admit`).

    Raises:
        UndecodableEvent: not a valid Writ event, or one its subject does not let it be.
    """
    headers = msg.headers or {}
    if "Nats-Sequence" in headers:
        seq, subject = int(headers["Nats-Sequence"]), headers.get("Nats-Subject", msg.subject)
    else:
        seq, subject = msg.metadata.sequence.stream, msg.subject
    event = decode(msg.data, seq=seq, subject=subject)
    topology.admit(event)
    return event


def history_of(records: Iterable[Record]) -> History:
    """Decode an intent's records; forged or undecodable ones count only for the fence and the
    message ids (their consumers dead-letter them)."""
    events: list[StoredEvent] = []
    msg_ids: dict[str, int] = {}
    kept: list[Record] = []
    last = 0
    for record in records:
        kept.append(record)
        last = record.seq
        if record.msg_id:
            msg_ids[record.msg_id] = record.seq
        try:
            event = decode(record.data, seq=record.seq, subject=record.subject)
            topology.admit(event)
        except UndecodableEvent:
            continue
        events.append(event)  # admitted: its subject names this agent and intent
    return History(events=events, last_seq=last, msg_ids=msg_ids, records=tuple(kept))


def _history(records: Iterable[tuple[int, str, bytes, Mapping[str, str]]]) -> History:
    """:func:`history_of` (seq, subject, data, headers) as read."""
    return history_of(
        Record(seq, subject, headers.get("Nats-Msg-Id", ""), data) for seq, subject, data, headers in records
    )


async def direct_get_matching(nc: Client, stream: str, subject_filter: str, *, start_seq: int = 1) -> list[Msg]:
    """Every message on ``subject_filter`` from ``start_seq``, asked in two steps: the first, whose
    ``Nats-Num-Pending`` says how many more match, then exactly those. For a few messages of one
    intent among many: a batch larger than what is left makes the server look through every
    message stored after the last match for more."""
    msgs = await direct_get_batch(nc, stream, subject_filter, start_seq=start_seq, batch=1, limit=1)
    if msgs:
        headers = msgs[0].headers or {}
        if more := int(headers.get("Nats-Num-Pending", "0")):
            after = int(headers["Nats-Sequence"]) + 1
            msgs += await direct_get_batch(nc, stream, subject_filter, start_seq=after, batch=more, limit=more)
    return msgs


async def direct_history(nc: Client, agent_id: str, intent_id: str) -> History:
    """An intent's history by batched Direct Get: fast, answered by any replica, maybe one behind.

    In two steps (:func:`direct_get_matching`): read in one, for an intent an hour old on a busy
    plane, the server looked through the whole log since (9 ms of server CPU an intent at 40,000
    intents, and growing with the log; 0.3 ms in two steps)."""
    msgs = await direct_get_matching(nc, subjects.INTENTS_STREAM, subjects.intent_filter(agent_id, intent_id))
    return _history(
        (
            int((m.headers or {})["Nats-Sequence"]),
            (m.headers or {}).get("Nats-Subject", m.subject),
            m.data,
            m.headers or {},
        )
        for m in msgs
    )


async def leader_history(js: JetStreamContext, agent_id: str, intent_id: str) -> History:
    """An intent's history read message by message through ``$JS.API.STREAM.MSG.GET``, which the
    stream leader answers: as new as the stream's committed writes (slower; the fallback).

    Its last message is asked first and the reading stops there: asking past an intent's last
    message for a next one that is not there makes the server look through the whole log after it.
    """
    subject = subjects.intent_filter(agent_id, intent_id)
    try:
        last = await js.get_last_msg(subjects.INTENTS_STREAM, subject)
    except NotFoundError:
        return _history([])
    records: list[tuple[int, str, bytes, Mapping[str, str]]] = []
    seq, last_seq = 1, last.seq or 0
    while seq <= last_seq:
        try:
            raw = await js.get_msg(subjects.INTENTS_STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError:
            break  # removed meanwhile (the stream's limits): the history as it still is
        assert raw.seq is not None
        records.append((raw.seq, raw.subject or "", raw.data or b"", raw.headers or {}))
        seq = raw.seq + 1
    return _history(records)


async def read_history(
    nc: Client, agent_id: str, intent_id: str, *, min_seq: int = 0, event_id: str | None = None
) -> History:
    """Fold input: every admitted event of one intent, in stream order, at least as new as the
    event that made us read (read-your-writes: :func:`consistency.covers`).

    Direct Get first (any replica may answer, one behind too); if the history does not reach
    ``min_seq`` or lacks ``event_id``, read again a few times, then through the stream leader.

    Undecodable or forged messages on the intent's subjects are skipped (their consumers
    dead-letter them) but still count for the fence: ``last_seq`` is the true last sequence.

    Args:
        nc: connection.
        agent_id, intent_id: the intent.
        min_seq: the trigger's stream sequence (0: no bound).
        event_id: the trigger's envelope id, which the history must hold (None: no check).

    Raises:
        HistoryBehind: not even the leader's read reached the trigger (a leader change under
            way): the caller must not decide now, but redeliver.
    """
    for pause in READ_PAUSES:
        history = await direct_history(nc, agent_id, intent_id)
        if covers(history.events, history.last_seq, min_seq=min_seq, event_id=event_id):
            return history
        await asyncio.sleep(pause)
    log.info("%s: %d direct reads were behind seq %d; asking the stream leader", intent_id, DIRECT_READS, min_seq)
    try:
        history = await leader_history(nc.jetstream(), agent_id, intent_id)
    except ANSWER_LOST as exc:
        raise HistoryBehind(f"{intent_id}: replicas behind seq {min_seq} and the leader did not answer") from exc
    if covers(history.events, history.last_seq, min_seq=min_seq, event_id=event_id):
        return history
    raise HistoryBehind(f"{intent_id}: even the stream leader's history ends at {history.last_seq}, before {min_seq}")


async def last_on_subject(js: JetStreamContext, stream: str, subject: str) -> RawStreamMsg | None:
    """The last message on ``subject``, or None when there is none."""
    try:
        return await js.get_last_msg(stream, subject, direct=True)
    except NotFoundError:
        return None


async def dead_letter(js: JetStreamContext, service: str, msg: Msg, *, code: str, reason: str) -> None:
    """Park an undecodable or invalid message in ``WRIT_DLQ`` with the reason, once: every
    service that meets it uses the same message id, so the stream keeps one copy."""
    try:
        origin = f"{msg.metadata.stream}:{msg.metadata.sequence.stream}"
    except (nats.errors.Error, AttributeError, ValueError):
        origin = msg.subject
    headers = {
        "Nats-Msg-Id": f"dlq:{origin}",
        "Writ-Dead-Letter-Service": service,
        "Writ-Dead-Letter-Code": code,
        "Writ-Dead-Letter-Reason": reason[:1000],
        "Writ-Original-Subject": msg.subject,
        "Writ-Original-Origin": origin,
    }
    await js.publish(subjects.dlq_subject(service), msg.data, headers=headers)


def split_servers(urls: str) -> list[str]:
    """``"nats://a:4222, nats://b:4222"`` -> ``["nats://a:4222", "nats://b:4222"]``.

    Raises:
        ValueError: no URL at all.
    """
    servers = [u.strip() for u in urls.split(",") if u.strip()]
    if not servers:
        raise ValueError(f"no NATS URL in {urls!r}")
    return servers
