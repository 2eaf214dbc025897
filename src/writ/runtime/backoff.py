"""How long the supervisor waits before restarting a child that exited: doubling from a short
first delay up to a low cap, and back to the first delay once a run was healthy."""

from __future__ import annotations

from dataclasses import dataclass

BACKOFF_START = 0.5
# Low: every service waits on nats-server, so its backoff is the plane's outage after a crash.
BACKOFF_MAX = 5.0
HEALTHY_AFTER = 10.0  # a child that ran this long before exiting restarts with the first delay


@dataclass
class Backoff:
    """Restart delays for one child. ``next_delay`` is called once per exit (or failed start)."""

    start: float = BACKOFF_START
    cap: float = BACKOFF_MAX
    healthy_after: float = HEALTHY_AFTER
    current: float = BACKOFF_START

    def __post_init__(self) -> None:
        self.current = min(self.start, self.cap)

    def next_delay(self, ran_for: float) -> float:
        """The delay before the next start of a child that ran ``ran_for`` seconds this time."""
        if ran_for >= self.healthy_after:
            self.reset()
        delay = self.current
        self.current = min(self.current * 2, self.cap)
        return delay

    def reset(self) -> None:
        """Start again from the first delay (a healthy run, or an operator's restart)."""
        self.current = min(self.start, self.cap)
