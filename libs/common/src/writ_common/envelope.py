"""The one envelope around every event, and decoding with upcasting and clear rejections."""

from __future__ import annotations

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
    except (msgspec.ValidationError, msgspec.DecodeError, TypeError, KeyError, ValueError, AttributeError) as exc:
        # An upcaster fed a payload of the wrong shape fails like any invalid payload.
        raise UndecodableEvent("invalid_payload", f"{kind} v{version}: {exc}") from exc


def decode(data: bytes, *, seq: int = 0, subject: str = "") -> StoredEvent:
    """Decode a raw message into a :class:`StoredEvent`.

    Raises:
        UndecodableEvent: the bytes are not a valid, known Writ event.
    """
    try:
        envelope = _envelope_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise UndecodableEvent("malformed_envelope", str(exc)) from exc
    return StoredEvent(envelope=envelope, payload=decode_payload(envelope), seq=seq, subject=subject)
