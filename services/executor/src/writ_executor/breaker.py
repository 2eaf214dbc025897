"""A circuit breaker per tool server: closed -> open after repeated failures -> half_open after a
cooldown -> closed on one success. Pure state machine; the caller supplies the clock and records
transitions as events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class Transition:
    from_state: State
    to_state: State
    reason: str
    consecutive_failures: int


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, cooldown: float = 5.0) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.state: State = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self._trial_out = False

    def allow(self, now: float) -> tuple[bool, Transition | None]:
        """May a call go through now? Moves open -> half_open when the cooldown is over."""
        if self.state == "open":
            if now - self.opened_at < self.cooldown:
                return False, None
            self._trial_out = True
            return True, self._move("half_open", f"cooldown of {self.cooldown:g}s over; one trial call")
        if self.state == "half_open":
            if self._trial_out:
                return False, None
            self._trial_out = True
        return True, None

    def retry_in(self, now: float) -> float:
        """Seconds until a call may be tried again."""
        return max(0.0, self.cooldown - (now - self.opened_at)) if self.state == "open" else 0.0

    def record_success(self) -> Transition | None:
        self.failures = 0
        self._trial_out = False
        if self.state != "closed":
            return self._move("closed", "a call succeeded")
        return None

    def record_failure(self, now: float, why: str) -> Transition | None:
        self.failures += 1
        self._trial_out = False
        if self.state == "half_open" or (self.state == "closed" and self.failures >= self.failure_threshold):
            self.opened_at = now
            return self._move("open", f"{self.failures} consecutive failures; last: {why}")
        return None

    def _move(self, to_state: State, reason: str) -> Transition:
        transition = Transition(self.state, to_state, reason, self.failures)
        self.state = to_state
        return transition
