"""schemas/ is generated from the event catalog: it must not drift, and real events must validate."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from writ_common import events as ev
from writ_common import schemagen
from writ_common.envelope import Producer, encode, make_envelope
from writ_common.events import CATALOG, CURRENT_VERSION, EVENT_TYPE

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
PRODUCER = Producer(service="test", instance="t-1", version="0.0.0")
COMPONENT_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")


def load(path: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((SCHEMAS / path).read_text(encoding="utf-8"))
    return result


def test_schemas_match_the_code() -> None:
    drifted = schemagen.check(SCHEMAS)
    assert not drifted, (
        "schemas/ is out of date with writ_common.events: run `make schemas` "
        "(python -m writ_common.schemagen) and commit the result. Drifted: " + ", ".join(drifted)
    )


def test_render_is_deterministic() -> None:
    first, second = schemagen.render(), schemagen.render()
    assert first == second
    assert all(text.endswith("\n") and not text.endswith("\n\n") for text in first.values())


def test_check_reports_missing_changed_and_stale(tmp_path: Path) -> None:
    schemagen.write(tmp_path)
    assert schemagen.check(tmp_path) == []
    (tmp_path / "asyncapi.yaml").write_text("{}\n")
    (tmp_path / "events" / "intent.submitted.v1.json").unlink()
    (tmp_path / "events" / "intent.gone.v9.json").write_text("{}\n")
    assert schemagen.check(tmp_path) == [
        "asyncapi.yaml",
        "events/intent.gone.v9.json",
        "events/intent.submitted.v1.json",
    ]
    schemagen.write(tmp_path)
    assert schemagen.check(tmp_path) == []
    assert not (tmp_path / "events" / "intent.gone.v9.json").exists()


@pytest.mark.parametrize(("event_type", "version"), sorted(CATALOG))
def test_every_catalog_entry_has_a_valid_schema(event_type: str, version: int) -> None:
    path = f"events/{event_type}.v{version}.json"
    assert (SCHEMAS / path).is_file(), f"{path} missing: run `make schemas`"
    schema = load(path)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://writ.dev/schemas/{path}"
    assert schema["properties"]["type"]["const"] == event_type
    assert schema["properties"]["version"]["const"] == version
    assert {"id", "type", "version", "occurred_at", "producer", "payload"} <= set(schema["required"])
    # every local $ref resolves inside this one file
    refs = re.findall(r'"\$ref": "#/\$defs/([^"]+)"', json.dumps(schema))
    assert refs and all(name in schema["$defs"] for name in refs)


def examples() -> list[ev.Payload]:
    annotations = ev.ToolAnnotations(read_only=True, destructive=False)
    return [
        ev.IntentSubmitted(
            agent_id="agent-1",
            idempotency_key="k-1",
            tool="time/get_current_time",
            arguments={"timezone": "Europe/Paris", "nested": {"n": [1, 2.5, None]}},
            issued_at="2026-01-01T00:00:00Z",
            nonce="abc",
            signature="c2ln",
        ),
        ev.IntentPlanned(
            server="time",
            tool="get_current_time",
            tool_digest="sha256:aa",
            args_digest="sha256:bb",
            annotations=annotations,
        ),
        ev.IntentRejected(stage="authenticate", code="bad_signature", reason="signature does not verify"),
        ev.ToolsDiscovered(
            server="time",
            tools=[
                ev.ToolDefinition(
                    name="get_current_time",
                    input_schema={"type": "object"},
                    annotations=annotations,
                    tool_digest="sha256:aa",
                )
            ],
        ),
        ev.ExecutionFailed(attempt=1, retryable=False, code="tool_error", reason="boom"),
        ev.Receipt(
            position=1,
            intent_id="in-abc",
            agent_id="agent-1",
            status="succeeded",
            stage="execute",
            code="ok",
            reason="done",
            event_ids=["01J"],
            recorded_at="2026-01-01T00:00:01Z",
            ledger_key_id="ed25519:0011",
            prev_hash="sha256:00",
        ),
    ]


def validator_for(payload: ev.Payload) -> Draft202012Validator:
    kind = EVENT_TYPE[type(payload)]
    return Draft202012Validator(load(f"events/{kind}.v{CURRENT_VERSION[kind]}.json"))


@pytest.mark.parametrize("payload", examples(), ids=lambda p: EVENT_TYPE[type(p)])
def test_encoded_events_validate_against_their_schema(payload: ev.Payload) -> None:
    envelope = make_envelope(payload, producer=PRODUCER, intent_id="in-abc", agent_id="agent-1")
    document = json.loads(encode(envelope))
    validator_for(payload).validate(document)


def test_schema_rejects_wrong_type_version_and_payload() -> None:
    payload = examples()[1]
    document = json.loads(encode(make_envelope(payload, producer=PRODUCER)))
    validator = validator_for(payload)
    for change in (
        {"type": "intent.authorized"},
        {"version": 99},
        {"payload": {**document["payload"], "annotations": {"read_only": "yes"}}},
        {"payload": {k: v for k, v in document["payload"].items() if k != "tool_digest"}},
    ):
        with pytest.raises(ValidationError):
            validator.validate({**document, **change})
    without_producer = {k: v for k, v in document.items() if k != "producer"}
    with pytest.raises(ValidationError):
        validator.validate(without_producer)


def test_asyncapi_document_is_consistent() -> None:
    text = (SCHEMAS / "asyncapi.yaml").read_text(encoding="utf-8")
    doc = json.loads(text)  # JSON is YAML 1.2: the file is read by YAML and JSON tools alike
    assert doc["asyncapi"].startswith("3.0")

    def resolve(ref: str) -> Any:
        assert ref.startswith("#/"), ref
        node: Any = doc
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    for section in ("channels", "operations"):
        assert all(COMPONENT_KEY.match(key) for key in doc[section]), section
    assert all(COMPONENT_KEY.match(key) for key in doc["components"]["messages"])

    for channel in doc["channels"].values():
        placeholders = set(re.findall(r"\{([^}]+)\}", channel["address"]))
        assert placeholders == set(channel.get("parameters", {})), channel["address"]
        for ref in channel["messages"].values():
            message = resolve(ref["$ref"])
            resolve(message["headers"]["$ref"])
            schema_ref = message["payload"].get("schema", {}).get("$ref")
            if schema_ref is not None:
                assert (SCHEMAS / schema_ref).is_file(), schema_ref

    for op_id, operation in doc["operations"].items():
        assert operation["action"] in {"send", "receive"}
        channel = resolve(operation["channel"]["$ref"])
        for ref in operation["messages"]:
            assert ref["$ref"].startswith(operation["channel"]["$ref"] + "/messages/"), op_id
            resolve(ref["$ref"])
        assert channel


def test_asyncapi_covers_every_event_and_its_services() -> None:
    doc = load("asyncapi.yaml")
    channels, operations = doc["channels"], doc["operations"]
    by_title = {channel["title"]: channel for channel in channels.values()}
    for event_type, version in CATALOG:
        channel = by_title[event_type]
        assert f"{event_type.replace('.', '_')}_v{version}" in channel["messages"]
    assert by_title["intent.planned"]["address"] == "writ.intent.{agent_id}.{intent_id}.planned"
    assert by_title["execution.started"]["address"] == "writ.intent.{agent_id}.{intent_id}.execution_started"
    assert by_title["agent.registered"]["address"] == "writ.identity.agent.{agent_id}.registered"
    assert by_title["receipt.recorded"]["address"] == "writ.ledger.receipt.{agent_id}.{intent_id}"
    assert channels["dead_letters"]["address"] == "writ.dlq.{service}"

    def who(action: str, event_type: str) -> set[str]:
        channel_id = event_type.replace(".", "_")
        return {
            op["tags"][0]["name"]
            for op in operations.values()
            if op["action"] == action and op["channel"]["$ref"] == f"#/channels/{channel_id}"
        }

    assert who("receive", "intent.submitted") == {"identity", "ledger"}
    assert who("send", "intent.rejected") == {"identity", "registry"}
    assert who("send", "intent.authorized") == {"policy"}
    assert who("receive", "intent.authorized") == {"executor", "ledger", "policy"}  # policy: a rollout's signals
    assert who("send", "execution.succeeded") == {"executor"}
    assert who("send", "receipt.recorded") == {"ledger"}
    assert who("send", "dead_letters") == {"identity", "registry", "policy", "executor", "ledger"}
    intent_types = {t for t, _v in CATALOG if t not in schemagen.CONTROL_SUBJECTS}
    assert all("ledger" in who("receive", t) for t in intent_types)


def test_cli_check_flags_drift(tmp_path: Path) -> None:
    lines: list[str] = []
    assert schemagen.main([str(tmp_path)], echo=lines.append) == 0
    assert schemagen.main(["--check", str(tmp_path)], echo=lines.append) == 0
    (tmp_path / "asyncapi.yaml").write_text("{}\n")
    lines.clear()
    assert schemagen.main(["--check", str(tmp_path)], echo=lines.append) == 1
    assert lines and "make schemas" in lines[0]


def test_schema_matches_msgspec_for_payload_fields() -> None:
    """Guard against a generator that silently drops fields: payload properties equal Struct fields."""
    for (event_type, version), cls in CATALOG.items():
        schema = load(f"events/{event_type}.v{version}.json")
        name = schema["properties"]["payload"]["$ref"].removeprefix("#/$defs/")
        fields = {f.encode_name for f in msgspec.structs.fields(cls)}
        assert set(schema["$defs"][name]["properties"]) == fields, event_type
