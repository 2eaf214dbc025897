"""OpenTelemetry: one trace per intent, carried in NATS headers as W3C ``traceparent``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()


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


def setup_tracing(service: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install a tracer provider for ``service``.

    Args:
        service: the ``service.name`` resource attribute.
        exporter: where spans go; defaults to ``WRIT_TRACE_FILE`` (JSON Lines) when set.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is None and (trace_file := os.environ.get("WRIT_TRACE_FILE")):
        exporter = JsonLinesSpanExporter(Path(trace_file))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer("writ")


@contextmanager
def stage_span(name: str, headers: Mapping[str, str] | None, **attributes: str) -> Iterator[Span]:
    """A span for one stage, child of the trace found in the consumed message's headers."""
    parent = _propagator.extract(dict(headers or {}))
    with tracer().start_as_current_span(name, context=parent, attributes=attributes) as span:
        yield span


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add the current span's ``traceparent`` to ``headers`` (in place, and returned)."""
    _propagator.inject(headers)
    return headers
