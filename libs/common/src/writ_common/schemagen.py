"""Generate ``schemas/`` from the event catalog: one JSON Schema per event version, and AsyncAPI.

Usage: ``python -m writ_common.schemagen [--check] [OUT_DIR]`` (default ``schemas``). The output is
deterministic (sorted keys, stable order, trailing newline), so regenerating from unchanged code
is byte-identical; ``tests/unit/test_schemas.py`` fails when ``schemas/`` and the code drift apart.

* ``events/<type>.v<version>.json``: JSON Schema (draft 2020-12) of the full envelope of that event,
  ``type`` and ``version`` as constants and ``payload`` as the payload Struct's schema. Every
  ``$ref`` resolves inside the one file (``$defs``).
* ``asyncapi.yaml``: AsyncAPI 3.0 (written as JSON, which is valid YAML): one channel per subject
  pattern, messages referencing the event schema files, and which service sends and receives what.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from writ_common import subjects, topology
from writ_common.envelope import Envelope
from writ_common.events import CATALOG, Payload

SCHEMA_BASE = "https://writ.dev/schemas/"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
GENERATED_NOTE = "Generated from writ_common.events by `make schemas` (python -m writ_common.schemagen); do not edit."
ASYNCAPI_FILE = "asyncapi.yaml"
EVENTS_DIR = "events"

# --- where events travel -----------------------------------------------------------------------

# Control events: event type -> (subject pattern, stream). Every other type is an intent event on
# ``writ.intent.{agent_id}.{intent_id}.<token>`` in WRIT_INTENTS.
CONTROL_SUBJECTS: dict[str, tuple[str, str]] = {
    r.type: (r.subject, r.stream) for r in topology.ROUTES if r.stream != subjects.INTENTS_STREAM
}

PARAMETERS: dict[str, str] = {
    "agent_id": "The agent's id (a subject token).",
    "intent_id": "The intent's id, derived from (agent_id, idempotency_key).",
    "server": "The MCP server's registered name.",
    "service": "The Writ service that parked the message.",
    "approver_id": "The approver's id (a subject token).",
    "name": "A secret's or a views API token's name (a subject token); never a secret's value.",
}

INTENTS = "@intents"  # pattern: every event on WRIT_INTENTS

# Who sends and who receives each event type (fnmatch patterns over event types, or INTENTS).
# "agent" is the SDK / CLI acting for an agent.
SENDS: dict[str, tuple[str, ...]] = {
    party: topology.types_sent_by(party) for party in (topology.AGENT, *topology.SERVICES)
}
RECEIVES: dict[str, tuple[str, ...]] = {
    "agent": ("receipt.recorded",),
    "identity": ("intent.submitted", "agent.*", "approver.registered"),
    "registry": ("intent.authenticated", "server.*", "tools.discovered", "tool.override_set", "tool.accepted"),
    "policy": (
        "intent.planned",
        "policy.published",
        "policy.shadow_published",
        "policy.shadow_stopped",
        "policy.rollout_*",
        "approval.requested",
        "intent.cancel_requested",  # a request waiting for people ends when its agent cancels
        "approver.registered",
        # a canary rollout's signals: the slice's decisions and how its approval requests end
        "intent.authorized",
        "intent.denied",
        "intent.expired",
        "approval.expired",
    ),
    "executor": (
        "intent.authorized",
        "intent.cancel_requested",
        "server.*",
        "tools.discovered",
        "tool.override_set",
        "tool.accepted",
    ),
    "ledger": (
        INTENTS,
        "agent.*",
        "reader_token.*",
        "server.*",
        "tools.discovered",
        "tool.*",
        "receipt.recorded",
        "policy.rollout_*",
    ),
}
SERVICES = ("identity", "registry", "policy", "executor", "ledger")  # each may dead-letter

DEAD_LETTER_CHANNEL = "dead_letters"


def stream_of(event_type: str) -> str:
    control = CONTROL_SUBJECTS.get(event_type)
    return control[1] if control else subjects.INTENTS_STREAM


def address_of(event_type: str) -> str:
    control = CONTROL_SUBJECTS.get(event_type)
    if control:
        return control[0]
    return subjects.intent_subject("{agent_id}", "{intent_id}", event_type)


def schema_path(event_type: str, version: int) -> str:
    """Path of an event's schema, relative to the output directory."""
    return f"{EVENTS_DIR}/{event_type}.v{version}.json"


def _ident(text: str) -> str:
    """An AsyncAPI component key (``^[A-Za-z0-9_\\-]+$``) for ``text``."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in text)


# --- JSON Schema per event -----------------------------------------------------------------------


def _envelope_struct(payload_cls: type[Payload]) -> type[msgspec.Struct]:
    """A copy of :class:`Envelope` whose ``payload`` field is ``payload_cls`` (and required)."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for field in msgspec.structs.fields(Envelope):
        if field.name == "payload":
            fields.append((field.name, payload_cls))
        elif field.required:
            fields.append((field.name, field.type))
        elif field.default_factory is not msgspec.NODEFAULT:
            fields.append((field.name, field.type, msgspec.field(default_factory=field.default_factory)))
        else:
            fields.append((field.name, field.type, field.default))
    return msgspec.defstruct("Envelope", fields, kw_only=True, frozen=True)


def event_schema(event_type: str, version: int, payload_cls: type[Payload]) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the full envelope of ``(event_type, version)``."""
    shadow = _envelope_struct(payload_cls)
    (top,), defs = msgspec.json.schema_components([shadow], ref_template="#/$defs/{name}")
    envelope_name = top["$ref"].removeprefix("#/$defs/")
    body = defs.pop(envelope_name)
    body["properties"]["type"] = {"const": event_type, "type": "string"}
    body["properties"]["version"] = {"const": version, "type": "integer"}
    body.pop("title", None)
    body.pop("description", None)
    doc = (payload_cls.__doc__ or "").strip()
    return {
        "$schema": DRAFT,
        "$id": SCHEMA_BASE + schema_path(event_type, version),
        "$comment": GENERATED_NOTE,
        "title": f"{event_type} v{version}",
        "description": (
            f"Writ event {event_type!r}, version {version}: the envelope with its "
            f"{payload_cls.__name__} payload." + (f" {doc}" if doc else "")
        ),
        **body,
        "$defs": defs,
    }


# --- AsyncAPI ----------------------------------------------------------------------------------------


def _matches(event_type: str, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        if pattern == INTENTS:
            if stream_of(event_type) == subjects.INTENTS_STREAM:
                return True
        elif fnmatch.fnmatchcase(event_type, pattern):
            return True
    return False


def _header_schemas() -> dict[str, Any]:
    def obj(props: dict[str, str], required: tuple[str, ...] = ()) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {name: {"type": "string", "description": text} for name, text in props.items()},
        }
        if required:
            schema["required"] = list(required)
        return schema

    trace = {"traceparent": "W3C trace context of the span that produced the event."}
    return {
        "IntentHeaders": obj(
            {
                "Nats-Msg-Id": "<intent_id>:<event>:<attempt>: a re-run handler cannot append twice.",
                "Nats-Expected-Last-Subject-Sequence": "Stream sequence of the intent's last event as folded.",
                "Nats-Expected-Last-Subject-Sequence-Subject": "writ.intent.<agent_id>.<intent_id>.>: the fence.",
                **trace,
            },
            ("Nats-Msg-Id",),
        ),
        "ControlHeaders": obj(
            {
                "Nats-Msg-Id": "Deduplicates a re-sent control command.",
                "Nats-Expected-Last-Subject-Sequence": "Optional fence on the subject's last sequence.",
                "Nats-Expected-Last-Sequence": "Fence on the stream's last sequence (the receipt chain head).",
                **trace,
            },
            ("Nats-Msg-Id",),
        ),
        "DeadLetterHeaders": obj(
            {
                "Nats-Msg-Id": "dlq:<service>:<stream>:<seq>: a message is parked once.",
                "Writ-Dead-Letter-Code": "Why: malformed_envelope, unknown_type, unknown_version, invalid_payload, ...",
                "Writ-Dead-Letter-Reason": "The reason in words (at most 1000 characters).",
                "Writ-Original-Subject": "Subject the message was read from.",
                "Writ-Original-Origin": "<stream>:<sequence> of the original message.",
            },
            ("Writ-Dead-Letter-Code", "Writ-Dead-Letter-Reason", "Writ-Original-Subject"),
        ),
    }


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document describing Writ's subjects, messages, senders and receivers."""
    versions: dict[str, list[int]] = {}
    for event_type, version in sorted(CATALOG):
        versions.setdefault(event_type, []).append(version)

    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    for event_type, vs in versions.items():
        channel_id = _ident(event_type)
        address = address_of(event_type)
        stream = stream_of(event_type)
        channel_messages: dict[str, Any] = {}
        for version in vs:
            message_id = _ident(f"{event_type}_v{version}")
            payload_cls = CATALOG[(event_type, version)]
            headers = "IntentHeaders" if stream == subjects.INTENTS_STREAM else "ControlHeaders"
            messages[message_id] = {
                "name": event_type,
                "title": f"{event_type} v{version}",
                "summary": (payload_cls.__doc__ or payload_cls.__name__).strip().splitlines()[0],
                "contentType": "application/json",
                "headers": {"$ref": f"#/components/schemas/{headers}"},
                "payload": {
                    "schemaFormat": "application/schema+json;version=2020-12",
                    "schema": {"$ref": "./" + schema_path(event_type, version)},
                },
            }
            channel_messages[message_id] = {"$ref": f"#/components/messages/{message_id}"}
        channel: dict[str, Any] = {
            "address": address,
            "title": event_type,
            "description": f"{event_type} events, stored in stream {stream}.",
            "messages": channel_messages,
        }
        params = {name: {"description": PARAMETERS[name]} for name in PARAMETERS if "{" + name + "}" in address}
        if params:
            channel["parameters"] = params
        channels[channel_id] = channel

        refs = [{"$ref": f"#/channels/{channel_id}/messages/{m}"} for m in channel_messages]
        for action, table in (("send", SENDS), ("receive", RECEIVES)):
            for service, patterns in table.items():
                if _matches(event_type, patterns):
                    verb = "sends" if action == "send" else "receives"
                    operations[f"{service}_{action}_{channel_id}"] = {
                        "action": action,
                        "channel": {"$ref": f"#/channels/{channel_id}"},
                        "messages": refs,
                        "summary": f"{service} {verb} {event_type}.",
                        "tags": [{"name": service}],
                    }

    dlq_address = subjects.dlq_subject("{service}")
    channels[DEAD_LETTER_CHANNEL] = {
        "address": dlq_address,
        "title": "dead letters",
        "description": (
            f"Messages a service could not decode or handle, parked in stream {subjects.DLQ_STREAM} "
            "unchanged, with the reason in headers. Never dropped silently."
        ),
        "messages": {"dead_letter": {"$ref": "#/components/messages/dead_letter"}},
        "parameters": {"service": {"description": PARAMETERS["service"]}},
    }
    messages["dead_letter"] = {
        "name": "dead_letter",
        "title": "dead letter",
        "summary": "The original message bytes, unchanged; the reason is in the headers.",
        "contentType": "application/octet-stream",
        "headers": {"$ref": "#/components/schemas/DeadLetterHeaders"},
        "payload": {"description": "The original message body, as received (possibly not JSON)."},
    }
    for service in SERVICES:
        operations[f"{service}_send_{DEAD_LETTER_CHANNEL}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{DEAD_LETTER_CHANNEL}"},
            "messages": [{"$ref": f"#/channels/{DEAD_LETTER_CHANNEL}/messages/dead_letter"}],
            "summary": f"{service} parks an event it cannot decode or handle.",
            "tags": [{"name": service}],
        }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Writ events",
            "version": "1.0.0",
            "description": (
                "Event-sourced services over NATS JetStream. Every event is one envelope "
                "(see events/*.json); trace context travels in the `traceparent` header. " + GENERATED_NOTE
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "The NATS server with JetStream that carries every Writ stream.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _header_schemas()},
    }


# --- output ----------------------------------------------------------------------------------------


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """Every generated file: path relative to the output directory -> text."""
    files = {schema_path(t, v): _dump(event_schema(t, v, cls)) for (t, v), cls in sorted(CATALOG.items())}
    files[ASYNCAPI_FILE] = _dump(asyncapi())
    return dict(sorted(files.items()))


def _stale(out_dir: Path, expected: dict[str, str]) -> list[str]:
    """Generated-looking files in ``out_dir`` that the code no longer produces."""
    events = out_dir / EVENTS_DIR
    found = sorted(p.relative_to(out_dir).as_posix() for p in events.glob("*.json")) if events.is_dir() else []
    return [path for path in found if path not in expected]


def check(out_dir: Path | str) -> list[str]:
    """Paths (relative to ``out_dir``) that are missing, differ from the code, or are stale."""
    out = Path(out_dir)
    expected = render()
    drifted = []
    for path, text in expected.items():
        target = out / path
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            drifted.append(path)
    return sorted(drifted + _stale(out, expected))


def write(out_dir: Path | str) -> list[str]:
    """Write every file under ``out_dir``, removing stale event schemas; returns changed paths."""
    out = Path(out_dir)
    expected = render()
    changed = []
    for path in _stale(out, expected):
        (out / path).unlink()
        changed.append(path)
    for path, text in expected.items():
        target = out / path
        if target.is_file() and target.read_text(encoding="utf-8") == text:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8", newline="\n")
        changed.append(path)
    return sorted(changed)


def main(argv: list[str] | None = None, *, echo: Callable[[str], Any] = print) -> int:
    """``[--check] [OUT_DIR]``: write the files, or with ``--check`` only report drift (exit 1)."""
    args = list(sys.argv[1:] if argv is None else argv)
    only_check = "--check" in args
    args = [a for a in args if a != "--check"]
    if len(args) > 1 or (args and args[0].startswith("-")):
        echo("usage: python -m writ_common.schemagen [--check] [OUT_DIR]")
        return 2
    out_dir = Path(args[0] if args else "schemas")
    if only_check:
        drifted = check(out_dir)
        for path in drifted:
            echo(f"{out_dir / path}: out of date (run `make schemas`)")
        return 1 if drifted else 0
    changed = write(out_dir)
    echo(f"{out_dir}: {len(render())} files, {len(changed)} changed" + "".join(f"\n  {p}" for p in changed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
