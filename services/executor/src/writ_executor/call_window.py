"""What the executor's two control loops (``tuning``: a server's concurrency; ``admission_tuning``:
a route's admission limit) read their signals from: records per key, each with the time it was
made, kept for a while and read over a window. Pure."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class Timeline(Generic[T]):
    """Per key, ``(at, item)`` in the order recorded; ``maxlen``: the most kept per key."""

    maxlen: int | None = None
    by_key: dict[str, deque[tuple[datetime, T]]] = field(default_factory=dict)

    def add(self, key: str, at: datetime, item: T) -> None:
        self.by_key.setdefault(key, deque(maxlen=self.maxlen)).append((at, item))

    def prune(self, before: datetime) -> None:
        """Forget what was recorded before ``before``."""
        for records in self.by_key.values():
            while records and records[0][0] < before:
                records.popleft()

    def between(self, key: str, since: datetime, until: datetime) -> list[tuple[datetime, T]]:
        return [(at, item) for at, item in self.by_key.get(key, ()) if since <= at <= until]


def nearest_rank(ordered: Sequence[float], q: float, scale: float = 1.0) -> float | None:
    """The nearest-rank ``q`` quantile of sorted values, times ``scale``, to 3 places (None: none)."""
    if not ordered:
        return None
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * scale, 3)


def throughput(ended: Sequence[tuple[datetime, Any]]) -> float:
    """Calls per second over the calls' own span, so a window that began before the load does not
    dilute it (0.0: fewer than two calls)."""
    span = (ended[-1][0] - ended[0][0]).total_seconds() if len(ended) > 1 else 0.0
    return round((len(ended) - 1) / span, 3) if span > 0 else 0.0
