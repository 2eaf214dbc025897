"""Trace context on the bus: W3C ``traceparent`` in NATS headers, with the OpenTelemetry API only.

An agent's spans join the plane's trace when the agent's process has an OpenTelemetry SDK
installed; without one these are no-ops. The services' exporters live in ``telemetry``.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()


def tracer() -> trace.Tracer:
    return trace.get_tracer("writ")


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add the current span's ``traceparent`` to ``headers`` (in place, and returned)."""
    _propagator.inject(headers)
    return headers


def extract_context(headers: Mapping[str, str] | None) -> Context:
    """The trace context a consumed message's headers carry (empty without one)."""
    return _propagator.extract(dict(headers or {}))
