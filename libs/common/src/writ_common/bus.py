"""Appending to and reading from the log: the fenced append, an intent's history, dead letters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck, RawStreamMsg
from nats.js.errors import APIError, NotFoundError

from writ_common import subjects, topology
from writ_common.envelope import Envelope, StoredEvent, UndecodableEvent, decode, encode
from writ_common.errors import CodedError
from writ_common.telemetry import inject_headers

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


class StaleAppend(Exception):
    """The intent moved on since we read it: another writer appended first. Re-fold and decide."""


@dataclass(frozen=True, slots=True)
class History:
    """An intent's decoded events in order; ``last_seq`` is the fence for the next append."""

    events: list[StoredEvent]
    last_seq: int


def msg_id(intent_id: str, event_type: str, attempt: int | str = 0) -> str:
    """``Nats-Msg-Id`` of an intent event: a re-run handler cannot append it twice.

    ``attempt`` tells apart events of one type that may legitimately repeat: the execution
    attempt, or for approval decisions the approver and the position decided at.
    """
    return f"{intent_id}:{event_type}:{attempt}"


async def append(
    js: JetStreamContext,
    envelope: Envelope,
    *,
    expected_last_seq: int,
    attempt: int | str = 0,
    headers: dict[str, str] | None = None,
) -> PubAck:
    """Append an intent event, fenced and deduplicated.

    Args:
        js: JetStream context.
        envelope: the event; ``agent_id`` and ``intent_id`` name the intent.
        expected_last_seq: stream sequence of the intent's last event as we folded it (0: none).
        attempt: part of ``Nats-Msg-Id`` for events that may legitimately repeat (attempts).
        headers: extra headers; ``traceparent`` of the current span is added.

    Raises:
        StaleAppend: the server refused the append because the intent has moved on.
        StorageRefused: the intents stream is full (``storage_full``) or the event too large.
    """
    assert envelope.agent_id and envelope.intent_id, "an intent event names its agent and intent"
    all_headers = inject_headers(dict(headers or {}))
    all_headers["Nats-Msg-Id"] = msg_id(envelope.intent_id, envelope.type, attempt)
    all_headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_seq)
    all_headers["Nats-Expected-Last-Subject-Sequence-Subject"] = subjects.intent_filter(
        envelope.agent_id, envelope.intent_id
    )
    subject = subjects.intent_subject(envelope.agent_id, envelope.intent_id, envelope.type)
    try:
        return await js.publish(subject, encode(envelope), headers=all_headers)
    except APIError as exc:
        if exc.err_code == WRONG_LAST_SEQUENCE:
            raise StaleAppend(str(exc.description)) from exc
        if (refused := refusal(exc, subjects.INTENTS_STREAM)) is not None:
            raise refused from exc
        raise


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
    ``start_time``: instead of ``start_seq``, from the first message stored at or after it."""
    out: list[Msg] = []
    seq = start_seq
    since = start_time.astimezone(UTC).isoformat().replace("+00:00", "Z") if start_time else None
    while True:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            request: dict[str, object] = {"next_by_subj": subject_filter, "batch": batch}
            if since is not None and not out:
                request["start_time"] = since  # the server takes a time or a sequence, not both
            else:
                request["seq"] = seq
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
            more = False
            while True:
                msg = await sub.next_msg(timeout=timeout)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status is not None:
                    # 204: end of this batch (the server may cap it below ``batch``), and how many
                    # matching messages remain; 404: nothing (more) found.
                    more = status == "204" and int(headers.get("Nats-Num-Pending", "0")) > 0
                    break
                out.append(msg)
                seq = int(headers["Nats-Sequence"]) + 1
        finally:
            await sub.unsubscribe()
        if not more or (limit is not None and len(out) >= limit):
            return out


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


async def read_history(nc: Client, agent_id: str, intent_id: str) -> History:
    """Fold input: every admitted event of one intent, in stream order.

    Undecodable or forged messages on the intent's subjects are skipped (their consumers
    dead-letter them) but still count for the fence: ``last_seq`` is the true last sequence.
    """
    msgs = await direct_get_batch(nc, subjects.INTENTS_STREAM, subjects.intent_filter(agent_id, intent_id))
    events: list[StoredEvent] = []
    last = 0
    for msg in msgs:
        last = int((msg.headers or {})["Nats-Sequence"])
        try:
            event = stored(msg)
        except UndecodableEvent:
            continue
        events.append(event)  # admitted: its subject names this agent and intent
    return History(events=events, last_seq=last)


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
