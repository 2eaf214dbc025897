"""The one envelope around every event, and decoding with upcasting and clear rejections."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from writ_common.events import CATALOG, CURRENT_VERSION, EVENT_TYPE, Payload
from writ_common.ids import new_event_id


class Producer(msgspec.Struct, frozen=True, kw_only=True):
    service: str
    instance: str
    version: str


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """Fields every event carries; ``payload`` is decoded by ``(type, version)``."""

    id: str
    type: str
    version: int
    occurred_at: str
    producer: Producer
    intent_id: str | None = None
    agent_id: str | None = None
    causation_id: str | None = None
    correlation_id: str | None = None
    payload: msgspec.Raw = msgspec.Raw(b"{}")


class UndecodableEvent(Exception):
    """A message that is not a valid Writ event; ``reason`` says why, for the dead-letter entry."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A decoded event with where it sits in its stream."""

    envelope: Envelope
    payload: Payload
    seq: int
    subject: str

    @property
    def type(self) -> str:
        return self.envelope.type


# Bounds checked on the raw bytes before any parser sees them: a decoder recursing 3000 levels
# deep raises RecursionError (and one message that never decodes must never stall a consumer).
MAX_DEPTH = 64
# Larger than any event Writ writes: 64 KiB of arguments, 1 MiB of kept tool output, the envelope.
MAX_EVENT_BYTES = 2 * 1024 * 1024
# What a payload may nest inside (arguments, a tool's result): the envelope and payload around it
# must still fit under MAX_DEPTH. Producers refuse deeper content with a code instead of writing
# an event nobody can read.
MAX_CONTENT_DEPTH = MAX_DEPTH - 8

# A JSON string (closing quote optional, so an unterminated one costs one pass, not one per quote).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_depth_exceeds(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON ``data`` nests arrays and objects more than ``limit`` deep.

    A byte scan, no parsing and no recursion: strings are dropped, then only the brackets are
    kept, then the innermost pairs are taken off ``limit`` times (one level each time); a pair
    left means deeper nesting. Every step runs in C (``re``, ``bytes.translate``/``replace``).
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # cannot nest deeper than it has openers: the common case costs two counts
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        # A marker between the two replaces, so "{[]}" loses one level here, not two.
        peeled = brackets.replace(b"[]", b"\0").replace(b"{}", b"\0").replace(b"\0", b"")
        if len(peeled) == len(brackets):
            return False
        brackets = peeled
    return b"[]" in brackets or b"{}" in brackets


def check_bounds(data: bytes, *, max_bytes: int = MAX_EVENT_BYTES, max_depth: int = MAX_DEPTH) -> None:
    """Refuse input too large or too deeply nested to decode safely, before decoding it.

    Raises:
        UndecodableEvent: ``too_large`` or ``too_deep``.
    """
    if len(data) > max_bytes:
        raise UndecodableEvent("too_large", f"{len(data)} bytes; the limit is {max_bytes}")
    if nesting_depth_exceeds(data, max_depth):
        raise UndecodableEvent("too_deep", f"JSON nested more than {max_depth} levels deep")


def decode_json(data: bytes, *, max_bytes: int = MAX_EVENT_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Decode untrusted JSON (a command body, an HTTP body) within the size and depth bounds.

    Raises:
        UndecodableEvent: ``too_large``, ``too_deep`` or ``malformed_json``.
    """
    check_bounds(data, max_bytes=max_bytes, max_depth=max_depth)
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise UndecodableEvent("malformed_json", str(exc)) from exc


# (type, from_version) -> function turning a vN payload dict into a vN+1 payload dict.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}

_envelope_decoder = msgspec.json.Decoder(Envelope)
_payload_decoders = {key: msgspec.json.Decoder(cls) for key, cls in CATALOG.items()}
_encoder = msgspec.json.Encoder()


def utcnow() -> str:
    """Now as RFC 3339 UTC with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    """Parse an RFC 3339 timestamp (``Z`` or offset)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a timezone: {value!r}")
    return parsed


def make_envelope(
    payload: Payload,
    *,
    producer: Producer,
    intent_id: str | None = None,
    agent_id: str | None = None,
    causation_id: str | None = None,
    correlation_id: str | None = None,
) -> Envelope:
    """Wrap ``payload`` in a new envelope of the payload's current type and version."""
    kind = EVENT_TYPE[type(payload)]
    return Envelope(
        id=new_event_id(),
        type=kind,
        version=CURRENT_VERSION[kind],
        occurred_at=utcnow(),
        producer=producer,
        intent_id=intent_id,
        agent_id=agent_id,
        causation_id=causation_id,
        correlation_id=correlation_id,
        payload=msgspec.Raw(_encoder.encode(payload)),
    )


def encode(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode_payload(envelope: Envelope) -> Payload:
    """Decode the payload of ``envelope``, upcasting old versions.

    Raises:
        UndecodableEvent: unknown type or version, or a payload that does not match its schema.
    """
    kind, version = envelope.type, envelope.version
    current = CURRENT_VERSION.get(kind)
    if current is None:
        raise UndecodableEvent("unknown_type", f"unknown event type {kind!r}")
    if version > current or version < 1:
        raise UndecodableEvent("unknown_version", f"{kind} version {version} is not known (latest {current})")
    try:
        if version == current:
            return _payload_decoders[(kind, version)].decode(envelope.payload)
        data: dict[str, Any] = msgspec.json.decode(envelope.payload)
        while version < current:
            upcast = UPCASTERS.get((kind, version))
            if upcast is None:
                raise UndecodableEvent("unknown_version", f"no upcaster for {kind} v{version}")
            data, version = upcast(data), version + 1
        return msgspec.convert(data, CATALOG[(kind, current)])
    except UndecodableEvent:
        raise
    except Exception as exc:
        # An upcaster fed a payload of the wrong shape fails like any invalid payload; whatever a
        # payload makes a decoder raise, it is this message that is bad, never the consumer.
        raise UndecodableEvent("invalid_payload", f"{kind} v{version}: {type(exc).__name__}: {exc}") from exc


def decode(data: bytes, *, seq: int = 0, subject: str = "") -> StoredEvent:
    """Decode a raw message into a :class:`StoredEvent`.

    The size and nesting bounds are checked on the bytes first (:func:`check_bounds`).

    Raises:
        UndecodableEvent: the bytes are not a valid, known Writ event (``too_large`` and
            ``too_deep`` among the codes).
    """
    check_bounds(data)
    try:
        envelope = _envelope_decoder.decode(data)
    except Exception as exc:
        raise UndecodableEvent("malformed_envelope", f"{type(exc).__name__}: {exc}") from exc
    return StoredEvent(envelope=envelope, payload=decode_payload(envelope), seq=seq, subject=subject)
