"""Open-loop load for ``make bench-load``: intents submitted at a fixed rate whatever the plane
does, latency measured from each call's scheduled time (no coordinated omission), and the verdict
on a run: did the plane keep up (every call answered, queue age not growing, p99 bounded)?"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client

from writ.bench import percentile
from writ.sdk import WritAgent, retry_after
from writ_common import events as ev
from writ_common.bus import read_history
from writ_common.envelope import parse_time

QUEUE_SAMPLES = 60  # intents per run whose history is read back for their queue age


@dataclass
class Outcome:
    at_s: float  # scheduled time, from the run's start
    latency_ms: float
    status: str
    code: str
    intent_id: str
    agent_id: str
    retry_after_s: float | None = None


@dataclass
class OpenRun:
    """One open-loop run: ``rate`` submissions a second for ``seconds``."""

    label: str
    rate: float
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    unanswered: int = 0
    queue_ages: list[tuple[float, float]] = field(default_factory=list)  # (at_s, ms)
    cpu_ms: dict[str, float] = field(default_factory=dict)

    def latencies(self, *, code: str = "ok", since: float = 0.0) -> list[float]:
        return [o.latency_ms for o in self.outcomes if o.code == code and o.at_s >= since]

    def queue_trend(self) -> tuple[float, float]:
        """Median queue age (ms) of the run's first and last thirds."""
        third = self.seconds / 3
        first = [ms for at, ms in self.queue_ages if at < third] or [0.0]
        last = [ms for at, ms in self.queue_ages if at >= 2 * third] or [0.0]
        return percentile(first, 0.5), percentile(last, 0.5)

    def kept_up(self, p99_bound_ms: float, *, since: float = 0.0) -> bool:
        """Every call answered, p99 (of calls scheduled from ``since``) within the bound, and queue
        age not growing over the run: the plane sustains this rate, it is not just absorbing it."""
        ok = self.latencies(since=since)
        first, last = self.queue_trend()
        answered = len(self.outcomes)
        return (
            self.unanswered == 0
            and answered >= 0.9 * self.rate * self.seconds
            and bool(ok)
            and percentile(ok, 0.99) <= p99_bound_ms
            and last <= 2 * first + 20
        )

    def summary(self, p99_bound_ms: float, *, since: float = 0.0) -> dict[str, Any]:
        ok = self.latencies() or [0.0]
        first, last = self.queue_trend()
        calls = sum(1 for o in self.outcomes if o.code == "ok")
        per_call = {name: round(ms / max(1, len(self.outcomes)), 3) for name, ms in sorted(self.cpu_ms.items())}
        return {
            "label": self.label,
            "rate": self.rate,
            "seconds": self.seconds,
            "submitted": len(self.outcomes) + self.unanswered,
            "succeeded": calls,
            "calls_per_s": round(calls / self.seconds, 1),
            "p50_ms": round(percentile(ok, 0.5), 2),
            "p99_ms": round(percentile(ok, 0.99), 2),
            "max_ms": round(max(ok), 2),
            "queue_age_ms_first_third": round(first, 2),
            "queue_age_ms_last_third": round(last, 2),
            "unanswered": self.unanswered,
            "codes": dict(Counter(o.code for o in self.outcomes)),
            "kept_up": self.kept_up(p99_bound_ms, since=since),
            "plane_cpu_ms_per_call": round(sum(v for k, v in per_call.items() if not k.startswith("tool:")), 3),
        }


async def open_loop(
    agents: list[WritAgent],
    tool: str,
    arguments: dict[str, Any],
    run: OpenRun,
    *,
    grace: float = 30.0,
    during: Callable[[float], Coroutine[Any, Any, None]] | None = None,
    schedule: list[tuple[float, float]] | None = None,
) -> OpenRun:
    """Submit ``run.rate`` intents a second for ``run.seconds`` (or by ``schedule``: phases of
    (seconds, rate)), round robin over ``agents``, then wait up to ``grace`` seconds for the last
    receipts. ``during(t0)`` runs alongside (a kill)."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(n: int, at: float) -> None:
        agent = agents[n % len(agents)]
        try:
            submission = await agent.submit(tool, arguments, idempotency_key=uuid.uuid4().hex)
            receipt = await agent.receipt(submission.intent_id, timeout=run.seconds + grace)
        except Exception:
            run.unanswered += 1
            return
        latency_ms = (loop.time() - at) * 1000
        run.outcomes.append(
            Outcome(
                at - start,
                latency_ms,
                receipt.status,
                receipt.code,
                receipt.intent_id,
                agent.agent_id,
                retry_after(receipt),
            )
        )

    side = asyncio.create_task(during(start)) if during else None
    tasks: list[asyncio.Task[None]] = []
    for n, offset in enumerate(offsets(schedule or [(run.seconds, run.rate)])):
        if (delay := start + offset - loop.time()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n, start + offset)))
    await asyncio.gather(*tasks)
    if side is not None:
        await side
    return run


async def sample_queue_ages(nc: Client, run: OpenRun) -> None:
    """Queue age of a spread of the run's calls: execution.started minus submission (the time an
    intent spent in the stages and their queues before its tool ran), read from the log."""
    done = sorted((o for o in run.outcomes if o.code == "ok"), key=lambda o: o.at_s)
    step = max(1, len(done) // QUEUE_SAMPLES)
    for outcome in done[::step]:
        history = await read_history(nc, outcome.agent_id, outcome.intent_id)
        submitted = next((e for e in history.events if isinstance(e.payload, ev.IntentSubmitted)), None)
        started = next((e for e in history.events if isinstance(e.payload, ev.ExecutionStarted)), None)
        if submitted and started:
            age = parse_time(started.envelope.occurred_at) - parse_time(submitted.envelope.occurred_at)
            run.queue_ages.append((outcome.at_s, age.total_seconds() * 1000))


def back_to_normal(run: OpenRun, after_s: float, bound_ms: float) -> float | None:
    """Seconds from ``after_s`` until the first call from which every later call succeeded within
    ``bound_ms`` (None: never, in this run)."""
    later = sorted((o for o in run.outcomes if o.at_s >= after_s), key=lambda o: o.at_s)
    normal_from: float | None = None
    for outcome in later:
        if outcome.code == "ok" and outcome.latency_ms <= bound_ms:
            normal_from = outcome.at_s if normal_from is None else normal_from
        else:
            normal_from = None
    return None if normal_from is None else max(0.0, normal_from - after_s)


def offsets(schedule: list[tuple[float, float]]) -> list[float]:
    """When each call is due, from the start, for phases of (seconds, calls per second)."""
    out: list[float] = []
    begin = 0.0
    for seconds, rate in schedule:
        n = 0
        while (at := n / rate) < seconds:
            out.append(begin + at)
            n += 1
        begin += seconds
    return out
