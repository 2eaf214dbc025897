"""Prometheus metrics, one definition each; every service serves them on ``/metrics``."""

from __future__ import annotations

import os
import threading
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
REPLAY_SKIPPED = Counter(
    "writ_replay_skipped_total",
    "Deliveries at or below the ack floor a stage had seen (its consumer lost its progress), acked unhandled",
    ["service"],
)
CONSUMERS_RESTORED = Counter(
    "writ_consumers_restored_total",
    "Durable consumers found with less progress than seen (placed anew after a node's removal) and reset",
    ["service"],
)
SKIPPED_EVENTS = Counter(
    "writ_skipped_events_total",
    "Events a reader moved past without applying them (undecodable, or its view could not take them)",
    ["reader", "code"],
)
HISTORY_FOLDS = Counter(
    "writ_history_folds_total",
    "Intent histories a stage folded, by source: carried by the trigger, or read from the stream",
    ["service", "source"],
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
AGENT_SUSPENSIONS = Counter(
    "writ_agent_suspensions_total", "Agents identity suspended at the bus (over their ingress budget)", ["code"]
)
INGRESS_CHECK_FAILURES = Counter(
    "writ_ingress_check_failures_total", "Ingress checks that could not read the bus nodes' connections"
)
OVERLOADED = Counter(
    "writ_overloaded_total", "Calls answered `overloaded` (not run: their route was at its limit)", ["route"]
)
SHARE_DEFERRALS = Counter(
    "writ_share_deferrals_total",
    "Calls not given a free place because another agent calling the same route or server was due it"
    " (answered `overloaded`, or back to the stream)",
    ["scope", "name"],
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

# -- segmented signals: per agent, server and tool, with bounded label cardinality ------------------

OTHER = "_other"  # every agent, server or tool past a label's limit
MAX_AGENTS = 100
MAX_SERVERS = 50
MAX_TOOLS = 200  # server/tool pairs
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

_SEGMENT = ["agent", "server", "tool"]
SEGMENT_DECISIONS = Counter(
    "writ_segment_decisions_total", "Policy's first decision on an intent per agent, server and tool",
    [*_SEGMENT, "decision"],  # allow, approval, deny
)  # fmt: skip
SEGMENT_DECISION_SECONDS = Histogram(
    "writ_segment_decision_seconds", "intent.planned to policy's first decision, per agent, server and tool",
    _SEGMENT, buckets=_LATENCY_BUCKETS,
)  # fmt: skip
SEGMENT_OUTCOMES = Counter(
    "writ_segment_outcomes_total", "How intents ended per agent, server and tool",
    [*_SEGMENT, "status"],  # succeeded, failed, denied, rejected, expired, outcome_unknown
)  # fmt: skip
SEGMENT_QUEUE_AGE_SECONDS = Histogram(
    "writ_segment_queue_age_seconds",
    "How old an intent event was when a service consumed it, per service and agent",
    ["service", "agent"],
    buckets=_LATENCY_BUCKETS,
)


class BoundedLabel:
    """A label's values, the first ``limit`` distinct ones kept and any later one counted as
    ``_other``: an agent fleet or a tool catalog cannot grow the metrics without bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


AGENT_LABEL = BoundedLabel(MAX_AGENTS)
SERVER_LABEL = BoundedLabel(MAX_SERVERS)
TOOL_LABEL = BoundedLabel(MAX_TOOLS)


def segment(agent_id: str | None, server: str | None, tool: str | None) -> tuple[str, str, str]:
    """The (agent, server, tool) labels of one intent, each bounded; ``-`` where unknown (an
    intent rejected before it was planned)."""
    agent = AGENT_LABEL(agent_id) if agent_id else "-"
    if not server or not tool:
        return agent, "-", "-"
    if TOOL_LABEL(f"{server}/{tool}") == OTHER:
        return agent, SERVER_LABEL(server), OTHER
    return agent, SERVER_LABEL(server), tool


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
