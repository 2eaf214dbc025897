"""The envelope: roundtrips, clear rejections with a code for the dead-letter entry, upcasting."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import msgspec
import pytest

from writ_common import envelope as envelope_module
from writ_common import events as ev
from writ_common.envelope import (
    UPCASTERS,
    Envelope,
    Producer,
    UndecodableEvent,
    decode,
    encode,
    make_envelope,
    parse_time,
    utcnow,
)
from writ_common.events import CATALOG, CURRENT_VERSION, EVENT_TYPE

pytestmark = pytest.mark.unit

PRODUCER = Producer(service="test", instance="t-1", version="0.0.0")

PAYLOADS: list[ev.Payload] = [
    ev.IntentSubmitted(
        agent_id="agent-1",
        idempotency_key="k-1",
        tool="time/get_current_time",
        arguments={"timezone": "UTC", "list": [1, "two", {"three": 3.5}], "none": None},
        deadline="2026-01-01T00:01:00Z",
        issued_at="2026-01-01T00:00:00Z",
        nonce="n-1",
        signature="c2ln",
    ),
    ev.IntentPlanned(
        server="time",
        tool="get_current_time",
        tool_digest="sha256:aa",
        args_digest="sha256:bb",
        annotations=ev.ToolAnnotations(read_only=True),
    ),
    ev.IntentDenied(policy_digest=None, policy_ids=["deny-all"], code="denied", reason="no"),
    ev.ExecutionSucceeded(
        attempt=2, result={"content": [{"type": "text", "text": "hi"}]}, result_digest="x", duration_ms=1.5
    ),
    ev.ToolsDiscovered(
        server="time",
        tools=[
            ev.ToolDefinition(
                name="t", input_schema={"type": "object"}, annotations=ev.ToolAnnotations(), tool_digest="sha256:cc"
            )
        ],
    ),
]


def good(payload: ev.Payload | None = None) -> dict[str, Any]:
    """A valid encoded event as a dict, to be broken by a test."""
    env = make_envelope(payload or PAYLOADS[1], producer=PRODUCER, intent_id="in-abc", agent_id="agent-1")
    result: dict[str, Any] = json.loads(encode(env))
    return result


def raw(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def code_of(data: bytes) -> str:
    with pytest.raises(UndecodableEvent) as info:
        decode(data)
    assert info.value.reason
    assert str(info.value).startswith(info.value.code + ": ")
    return info.value.code


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: EVENT_TYPE[type(p)])
def test_roundtrip(payload: ev.Payload) -> None:
    env = make_envelope(
        payload,
        producer=PRODUCER,
        intent_id="in-abc",
        agent_id="agent-1",
        causation_id="01CAUSE",
        correlation_id="01CORR",
    )
    kind = EVENT_TYPE[type(payload)]
    assert env.type == kind
    assert env.version == CURRENT_VERSION[kind]
    stored = decode(encode(env), seq=7, subject="writ.intent.agent-1.in-abc.x")
    assert stored.payload == payload
    assert type(stored.payload) is type(payload)
    assert stored.type == kind
    assert (stored.seq, stored.subject) == (7, "writ.intent.agent-1.in-abc.x")
    got = stored.envelope
    assert (got.id, got.type, got.version, got.occurred_at, got.producer) == (
        env.id,
        env.type,
        env.version,
        env.occurred_at,
        env.producer,
    )
    assert (got.intent_id, got.agent_id, got.causation_id, got.correlation_id) == (
        "in-abc",
        "agent-1",
        "01CAUSE",
        "01CORR",
    )
    # encoding again gives the same bytes: payload bytes are carried through untouched
    assert encode(got) == encode(env)


def test_envelope_ids_are_unique_and_time_is_utc() -> None:
    first, second = make_envelope(PAYLOADS[2], producer=PRODUCER), make_envelope(PAYLOADS[2], producer=PRODUCER)
    assert first.id != second.id
    assert first.occurred_at.endswith("Z")
    assert parse_time(first.occurred_at).tzinfo is not None
    assert parse_time(utcnow()).utcoffset() == UTC.utcoffset(None)
    with pytest.raises(ValueError):
        parse_time("2026-01-01T00:00:00")


def test_optional_envelope_fields_may_be_absent() -> None:
    document = good()
    for name in ("intent_id", "agent_id", "causation_id", "correlation_id"):
        document.pop(name)
    stored = decode(raw(document))
    assert stored.envelope.intent_id is None
    assert stored.payload == PAYLOADS[1]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{not json",
        b"[]",
        b"null",
        b'"intent.submitted"',
        b'{"type": "intent.planned", "version": 1}',  # no id, occurred_at, producer
    ],
)
def test_malformed_envelope(data: bytes) -> None:
    assert code_of(data) == "malformed_envelope"


def test_envelope_field_of_wrong_type_is_malformed() -> None:
    assert code_of(raw({**good(), "version": "1"})) == "malformed_envelope"
    assert code_of(raw({**good(), "producer": "me"})) == "malformed_envelope"
    assert code_of(raw(good())[:-5]) == "malformed_envelope"  # truncated


def test_unknown_type() -> None:
    assert code_of(raw({**good(), "type": "intent.teleported"})) == "unknown_type"


@pytest.mark.parametrize("delta", [1, 100])
def test_unknown_future_version(delta: int) -> None:
    document = good()
    document["version"] = CURRENT_VERSION[document["type"]] + delta
    assert code_of(raw(document)) == "unknown_version"


def test_version_zero_is_unknown() -> None:
    assert code_of(raw({**good(), "version": 0})) == "unknown_version"


@pytest.mark.parametrize(
    "change",
    [
        {"annotations": "read-only"},  # struct expected
        {"annotations": {"read_only": "yes"}},  # bool expected, nested
        {"server": 42},  # str expected
        {"tool_digest": None},  # required, not nullable
    ],
)
def test_payload_fields_of_wrong_type(change: dict[str, Any]) -> None:
    document = good()
    document["payload"] = {**document["payload"], **change}
    assert code_of(raw(document)) == "invalid_payload"


def test_payload_missing_field_and_wrong_literal() -> None:
    document = good()
    document["payload"] = {k: v for k, v in document["payload"].items() if k != "server"}
    assert code_of(raw(document)) == "invalid_payload"
    rejected = good(ev.IntentRejected(stage="plan", code="unknown_tool", reason="none"))
    rejected["payload"]["stage"] = "teleport"
    assert code_of(raw(rejected)) == "invalid_payload"
    assert code_of(raw({**good(), "payload": [1, 2]})) == "invalid_payload"


def test_unknown_payload_fields_are_tolerated() -> None:
    """Forward compatibility inside one version: an added field with a default is ignored by old readers."""
    document = good()
    document["payload"]["added_later"] = {"x": 1}
    assert decode(raw(document)).payload == PAYLOADS[1]


# --- upcasting ---------------------------------------------------------------------------------


class WidgetV1(ev.Payload, frozen=True, kw_only=True):
    name: str


class WidgetV2(ev.Payload, frozen=True, kw_only=True):
    name: str
    size: int


class WidgetV3(ev.Payload, frozen=True, kw_only=True):
    label: str
    size: int


WIDGET = "test.widget"


@pytest.fixture
def widget_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test-only event type with three versions; every registry touched is restored after."""
    versions: tuple[tuple[int, type[ev.Payload]], ...] = ((1, WidgetV1), (2, WidgetV2), (3, WidgetV3))
    for version, cls in versions:
        monkeypatch.setitem(CATALOG, (WIDGET, version), cls)
        monkeypatch.setitem(envelope_module._payload_decoders, (WIDGET, version), msgspec.json.Decoder(cls))
    monkeypatch.setitem(CURRENT_VERSION, WIDGET, 3)
    widget: type[ev.Payload] = WidgetV3
    monkeypatch.setitem(EVENT_TYPE, widget, WIDGET)
    monkeypatch.setitem(UPCASTERS, (WIDGET, 1), lambda d: {**d, "size": 1})
    monkeypatch.setitem(UPCASTERS, (WIDGET, 2), lambda d: {"label": d["name"], "size": d["size"] * 10})


def widget_event(version: int, payload: dict[str, Any]) -> bytes:
    env = Envelope(
        id="01TESTWIDGET",
        type=WIDGET,
        version=version,
        occurred_at="2026-01-01T00:00:00Z",
        producer=PRODUCER,
        payload=msgspec.Raw(json.dumps(payload).encode()),
    )
    return encode(env)


@pytest.mark.usefixtures("widget_catalog")
def test_old_versions_are_upcast_to_the_current_one() -> None:
    assert decode(widget_event(1, {"name": "cog"})).payload == WidgetV3(label="cog", size=10)
    assert decode(widget_event(2, {"name": "cog", "size": 4})).payload == WidgetV3(label="cog", size=40)
    assert decode(widget_event(3, {"label": "x", "size": 5})).payload == WidgetV3(label="x", size=5)
    current = make_envelope(WidgetV3(label="y", size=1), producer=PRODUCER)
    assert current.version == 3


@pytest.mark.usefixtures("widget_catalog")
def test_upcast_result_is_validated_and_gaps_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    assert code_of(widget_event(1, {"name": 7})) == "invalid_payload"  # upcaster's output fails v3
    monkeypatch.delitem(UPCASTERS, (WIDGET, 2))
    assert code_of(widget_event(1, {"name": "cog"})) == "unknown_version"
    assert code_of(widget_event(4, {"label": "x", "size": 5})) == "unknown_version"


def test_widget_registration_is_undone() -> None:
    assert (WIDGET, 1) not in CATALOG
    assert WIDGET not in CURRENT_VERSION
    assert (WIDGET, 1) not in UPCASTERS
    assert code_of(widget_event(1, {"name": "cog"})) == "unknown_type"
