"""Prometheus metrics, one definition each; every service serves them on ``/metrics``."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram, start_http_server

STAGE_SECONDS = Histogram(
    "writ_stage_seconds",
    "Time a service spent handling one event (fold, decide, append)",
    ["service", "event"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
QUEUE_AGE_SECONDS = Histogram(
    "writ_queue_age_seconds",
    "How old an event was when a service consumed it (consume time minus occurred_at)",
    ["service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
DEAD_LETTERS = Counter("writ_dead_letters_total", "Messages parked in WRIT_DLQ", ["service", "code"])
CONSUMERS_RECREATED = Counter(
    "writ_consumers_recreated_total", "Durable consumers found deleted and recreated", ["service"]
)
SKIPPED_EVENTS = Counter(
    "writ_skipped_events_total",
    "Events a reader moved past without applying them (undecodable, or its view could not take them)",
    ["reader", "code"],
)
REDELIVERIES = Counter("writ_redeliveries_total", "Messages handed back for redelivery", ["service", "why"])
DECISIONS = Counter(
    "writ_decisions_total", "Terminal and authorization decisions by code", ["service", "event", "code"]
)
ATTEMPT_FAILURES = Counter(
    "writ_attempt_failures_total", "Tool call attempts that failed and may be retried", ["server", "code"]
)
BREAKER_STATE = Gauge(
    "writ_breaker_state", "Circuit breaker per tool server: 0 closed, 1 half-open, 2 open", ["server"]
)
BREAKER_TRANSITIONS = Counter(
    "writ_breaker_transitions_total", "Circuit breaker state changes", ["server", "from_state", "to_state"]
)
ADMISSION_LIMIT = Gauge(
    "writ_admission_limit", "The adaptive concurrency limit of a route (server/tool) in one executor", ["route"]
)
ADMISSION_IN_FLIGHT = Gauge("writ_admission_in_flight", "Calls a route has in flight in one executor", ["route"])
ADMISSION_ADJUSTMENTS = Counter(
    "writ_admission_adjustments_total", "Changes of a route's adaptive limit", ["route", "direction"]
)
OVERLOADED = Counter(
    "writ_overloaded_total", "Calls answered `overloaded` (not run: their route was at its limit)", ["route"]
)
VIEW_LAG_EVENTS = Gauge(
    "writ_view_lag_events", "Events in a stream the ledger's views have not applied yet (head - position)", ["stream"]
)
VIEW_LAG_SECONDS = Gauge(
    "writ_view_lag_seconds",
    "Age of the oldest event the ledger's views have not applied yet (0: caught up)",
    ["stream"],
)
STREAM_BYTES = Gauge(
    "writ_stream_bytes", "Bytes a stream holds (alert well before writ_stream_limit_bytes)", ["stream"]
)
STREAM_LIMIT_BYTES = Gauge(
    "writ_stream_limit_bytes", "The stream's byte limit; at it, new writes are refused (storage_full)", ["stream"]
)

BREAKER_LEVEL = {"closed": 0, "half_open": 1, "open": 2}


def serve_metrics(port: int, host: str = "127.0.0.1", *, port_file: Path | None = None) -> int:
    """Serve ``/metrics`` on ``host``:``port`` (a daemon thread); port 0 binds a free one.

    Args:
        port: the TCP port, or 0 for whichever the kernel hands out.
        host: the address to listen on.
        port_file: write the port actually bound into this file (atomically), for a supervisor
            that cannot know an ephemeral port in advance.

    Returns:
        The port bound.
    """
    server, _thread = start_http_server(port, addr=host)
    bound = int(server.server_port)
    if port_file is not None:
        port_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = port_file.with_name(f".{port_file.name}.{os.getpid()}.tmp")
        tmp.write_text(f"{bound}\n")
        os.replace(tmp, port_file)  # a reader sees no port or the whole of it
    return bound


def read_port_file(path: Path) -> int | None:
    """The port a process wrote with ``serve_metrics(port_file=...)``, or None (none yet, or unreadable)."""
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None
