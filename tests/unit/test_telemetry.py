"""When spans go over OTLP, and which trace an intent's first span starts."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from writ_common import telemetry
from writ_common.telemetry import IntentTraceIds, otlp_wanted


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),  # the exporter's default endpoint
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, False),
    ],
)
def test_otlp_is_wanted_as_the_standard_variables_say(env: dict[str, str], wanted: bool) -> None:
    assert otlp_wanted(env) is wanted


def test_asking_for_grpc_says_what_to_set_instead(caplog: pytest.LogCaptureFixture) -> None:
    otlp_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf" in caplog.text


def test_an_intents_root_spans_in_two_services_share_one_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider(id_generator=IntentTraceIds())
    provider.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setattr(telemetry, "tracer", lambda: provider.get_tracer("test"))

    # No traceparent in the headers: the agent does not trace. Two services meet the intent.
    with telemetry.stage_span("identity.intent.submitted", {}, **{"writ.intent_id": "in-a"}):
        pass
    with telemetry.stage_span("ledger.intent.submitted", None, **{"writ.intent_id": "in-a"}):
        pass
    with telemetry.stage_span("identity.intent.submitted", {}, **{"writ.intent_id": "in-b"}):
        pass
    finished = spans.get_finished_spans()
    trace_ids = [s.context.trace_id for s in finished if s.context]
    assert trace_ids[0] == trace_ids[1] != trace_ids[2]
    assert all(s.parent is None for s in finished)


def test_a_traceparent_from_the_agent_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider(id_generator=IntentTraceIds())
    provider.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setattr(telemetry, "tracer", lambda: provider.get_tracer("test"))
    agents = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{agents}-00f067aa0ba902b7-01"}

    with telemetry.stage_span("identity.intent.submitted", headers, **{"writ.intent_id": "in-a"}):
        pass
    (span,) = spans.get_finished_spans()
    assert span.context is not None and f"{span.context.trace_id:032x}" == agents
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
