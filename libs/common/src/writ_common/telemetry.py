"""OpenTelemetry: one trace per intent, carried in NATS headers as W3C ``traceparent``.

Spans go to a JSON Lines file (``WRIT_TRACE_FILE``) and/or, configured by the standard
``OTEL_EXPORTER_OTLP_*`` variables, to an OpenTelemetry collector over OTLP/HTTP.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Span

from writ_common.tracing import extract_context, tracer

log = logging.getLogger(__name__)
_starting_intent: ContextVar[str | None] = ContextVar("writ_starting_intent", default=None)


class IntentTraceIds(RandomIdGenerator):
    """A span that starts a trace (no ``traceparent`` came with the event: the agent does not
    trace) takes its trace id from the intent id. Each service that meets such an event first
    (identity, and the ledger following every event) then starts the same trace, so one intent
    is one trace, as DESIGN asks."""

    def generate_trace_id(self) -> int:
        intent_id = _starting_intent.get()
        if not intent_id:
            return super().generate_trace_id()
        return int.from_bytes(hashlib.sha256(b"writ-trace:" + intent_id.encode()).digest()[:16], "big")


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a JSON Lines file (``WRIT_TRACE_FILE``): cheap, greppable."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._path.open("a") as fh:
            for span in spans:
                ctx = span.get_span_context()
                parent = span.parent
                fh.write(
                    json.dumps(
                        {
                            "name": span.name,
                            "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
                            "span_id": f"{ctx.span_id:016x}" if ctx else None,
                            "parent_id": f"{parent.span_id:016x}" if parent else None,
                            "start": span.start_time,
                            "end": span.end_time,
                            "attributes": dict(span.attributes or {}),
                        }
                    )
                    + "\n"
                )
        return SpanExportResult.SUCCESS


def setup_tracing(
    service: str, exporter: SpanExporter | None = None, *, trace_file: Path | None = None
) -> TracerProvider:
    """Install a tracer provider for ``service``; shut it down at exit to flush what is batched.

    Args:
        service: the ``service.name`` resource attribute.
        exporter: where spans go; by default ``trace_file`` (JSON Lines, ``WRIT_TRACE_FILE``) when
            set, and OTLP when the environment asks for it (:func:`otlp_wanted`).
        trace_file: the JSON Lines file (settings.trace_file).
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service}), id_generator=IntentTraceIds())
    if exporter is None and trace_file is not None:
        exporter = JsonLinesSpanExporter(trace_file)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    otlp = otlp_wanted(os.environ)
    if otlp:
        # Imported here: it pulls in protobuf and requests, which only an exporting process needs.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Endpoint, headers and the batch's delay come from the standard OTEL_* variables. The
        # export deadline defaults to 3 s, not 10: with the collector down, a stopping service
        # spends that long flushing, well inside the supervisor's grace.
        given = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT")
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(timeout=None if given else 3.0)))
    if exporter is not None or otlp:
        trace.set_tracer_provider(provider)
    # Else spans would go nowhere: the API's no-op tracer costs nothing per stage and still
    # carries an agent's ``traceparent`` through (each stage's span is the agent's context).
    return provider


def otlp_wanted(env: Mapping[str, str]) -> bool:
    """Export over OTLP/HTTP when ``OTEL_TRACES_EXPORTER`` says ``otlp``, or it is unset and an
    OTLP endpoint is. gRPC is not carried (it would pull in grpcio): asking for it is refused
    with a warning naming the HTTP port to use instead."""
    exporters = {e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()}
    has_endpoint = bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    if "otlp" not in exporters and (exporters or not has_endpoint):
        return False
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    if protocol and protocol != "http/protobuf":
        log.warning(
            "tracing: OTLP protocol %r is not supported; set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and the"
            " collector's HTTP endpoint (port 4318). Spans are not exported.",
            protocol,
        )
        return False
    return True


@contextmanager
def stage_span(name: str, headers: Mapping[str, str] | None, **attributes: str) -> Iterator[Span]:
    """A span for one stage, child of the trace found in the consumed message's headers (without
    one, a root span of the trace the intent id names)."""
    parent = extract_context(headers)
    token = _starting_intent.set(attributes.get("writ.intent_id"))  # read when the span starts
    try:
        span = tracer().start_span(name, context=parent, attributes=attributes)
    finally:
        _starting_intent.reset(token)
    with trace.use_span(span, end_on_exit=True):
        yield span
