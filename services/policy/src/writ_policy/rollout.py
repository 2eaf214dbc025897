"""A candidate bundle enforced for a slice of agents, promoted or rolled back by itself. Pure.

The rules an operator relies on, and the controller applies on every tick:

* **Slice membership** (:func:`in_slice`): an agent's bucket is a hash of its id alone, so it is
  the same on every replica and after every restart, and a wider canary keeps the narrower one's
  agents.
* **Triggers** (:func:`parse_trigger`): ``SIGNAL>THRESHOLD [over WINDOW] [for HOLD]``, validated
  before anything starts.
* **Signals** (:class:`SampleBook`, :func:`read`): what the slice's decisions since the rollout
  began say, per trigger window, with no one agent of the slice carrying a signal.
* **The next step** (:func:`next_step`): from the folded rollout, the hysteresis memory, the
  readings and the time: wait, roll back, promote, or finish a promotion.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, cast, get_args

import msgspec

from writ_common import events as ev
from writ_common import topology
from writ_common.envelope import StoredEvent, parse_time
from writ_common.errors import Refusal
from writ_common.ids import TOKEN_RULE, is_token

Signal = Literal["denial_rate", "approval_backlog", "p99_decision_ms"]
SIGNALS: tuple[str, ...] = get_args(Signal)
DEFAULT_WINDOW_S = 300.0  # "over 5m" when a rate or a percentile names no window
DEFAULT_HOLD_S = 30.0  # "for 30s": a breach must last this long before it rolls anything back
DEFAULT_PROMOTE_AFTER_S = 1800.0
DEFAULT_COOLDOWN_S = 60.0
DEFAULT_MIN_DECISIONS = 5
HYSTERESIS = 0.1  # a breached trigger clears only once its signal is 10% below the threshold
HISTORY = 20  # ended rollouts kept for `rollout status`


class RolloutError(ValueError):
    """A rollout that cannot start as declared; the message says what to write instead."""


# -- declaring a rollout ------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"(\d+(?:\.\d+)?)"
_TRIGGER = re.compile(rf"^\s*([a-z0-9_]+)\s*>\s*{_NUMBER}\s*(?:over\s+(\S+)\s*)?(?:for\s+(\S+)\s*)?$", re.IGNORECASE)


def parse_duration(text: str, what: str = "duration") -> float:
    """``500ms``, ``30s``, ``5m``, ``2h``, ``1d`` -> seconds.

    Raises:
        RolloutError: anything else.
    """
    match = _DURATION.match(text.strip())
    if not match:
        raise RolloutError(f"{what} {text!r} must look like 30s, 5m, 2h (a number and ms, s, m, h or d)")
    return float(match[1]) * _UNIT_S[match[2]]


def parse_percent(text: str) -> float:
    """``10%`` or ``10`` -> 10.0, above 0 and at most 100.

    Raises:
        RolloutError: not a number, or out of range.
    """
    raw = text.strip().removesuffix("%")
    try:
        value = float(raw)
    except ValueError:
        raise RolloutError(f"--canary {text!r} must be a percentage, e.g. 10%") from None
    if not (0 < value <= 100) or not math.isfinite(value):
        raise RolloutError(f"--canary {text!r} must be above 0% and at most 100%")
    return value


def parse_trigger(text: str) -> ev.RolloutTrigger:
    """``SIGNAL>THRESHOLD [over WINDOW] [for HOLD]``: e.g. ``denial_rate>0.2 over 5m``,
    ``approval_backlog>10``, ``p99_decision_ms>50 over 1m for 10s``.

    Raises:
        RolloutError: an unknown signal, a threshold out of its range, a bad duration, or a window
            on ``approval_backlog`` (a count right now).
    """
    match = _TRIGGER.match(text)
    if not match:
        raise RolloutError(
            f"--rollback-if {text!r} must look like 'denial_rate>0.2 over 5m for 30s'"
            f" (SIGNAL>THRESHOLD [over WINDOW] [for HOLD]; signals: {', '.join(SIGNALS)})"
        )
    signal, threshold = match[1].lower(), float(match[2])
    if signal not in SIGNALS:
        raise RolloutError(f"--rollback-if {text!r}: no signal {signal!r}; known: {', '.join(SIGNALS)}")
    if signal == "denial_rate" and threshold >= 1:
        raise RolloutError(f"--rollback-if {text!r}: denial_rate is a fraction of decisions, below 1 (0.2 = 20%)")
    if signal == "approval_backlog":
        if match[3]:
            raise RolloutError(f"--rollback-if {text!r}: approval_backlog counts open requests now; it takes no window")
        window = 0.0
    else:
        window = parse_duration(match[3], "window") if match[3] else DEFAULT_WINDOW_S
        if window <= 0:
            raise RolloutError(f"--rollback-if {text!r}: the window must be longer than 0s")
    hold = parse_duration(match[4], "hold") if match[4] else DEFAULT_HOLD_S
    return ev.RolloutTrigger(
        text=" ".join(text.split()),
        signal=cast("Signal", signal),
        threshold=threshold,
        window_s=window,
        hold_s=hold,
    )


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """A rollout as declared, validated: who gets the candidate, what rolls it back, when it is promoted."""

    percent: float | None
    agents: tuple[str, ...]
    triggers: tuple[ev.RolloutTrigger, ...]
    promote_after_s: float
    cooldown_s: float
    min_decisions: int


def parse_spec(
    *,
    canary: str | None,
    agents: list[str],
    rollback_if: list[str],
    promote_after: str | None,
    cooldown: str | None,
    min_decisions: int = DEFAULT_MIN_DECISIONS,
) -> RolloutSpec:
    """Validate a whole declaration before anything starts.

    Raises:
        RolloutError: the first thing wrong, in a sentence.
    """
    if (canary is None) == (not agents):
        raise RolloutError("name the slice with exactly one of --canary PERCENT or --agents a,b")
    for agent in agents:
        if not is_token(agent):
            raise RolloutError(f"--agents: {agent!r} is not an agent id ({TOKEN_RULE})")
    if not rollback_if:
        raise RolloutError("declare at least one --rollback-if trigger: a canary nobody watches is just a load")
    triggers = tuple(parse_trigger(t) for t in rollback_if)
    texts = [t.text for t in triggers]
    if len(set(texts)) != len(texts):
        raise RolloutError("a --rollback-if trigger is declared twice")
    promote_after_s = parse_duration(promote_after, "--promote-after") if promote_after else DEFAULT_PROMOTE_AFTER_S
    cooldown_s = parse_duration(cooldown, "--cooldown") if cooldown else min(DEFAULT_COOLDOWN_S, promote_after_s / 2)
    if promote_after_s <= 0 or cooldown_s >= promote_after_s:
        raise RolloutError("--promote-after must be longer than 0s and than --cooldown")
    if min_decisions < 1:
        raise RolloutError("--min-decisions must be at least 1")
    return RolloutSpec(
        percent=parse_percent(canary) if canary is not None else None,
        agents=tuple(sorted(set(agents))),
        triggers=triggers,
        promote_after_s=promote_after_s,
        cooldown_s=cooldown_s,
        min_decisions=min_decisions,
    )


# -- who is in the slice ------------------------------------------------------------------------


def bucket(agent_id: str) -> float:
    """The agent's place in [0, 100): a hash of its id, the same everywhere and always."""
    digest = hashlib.sha256(agent_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def in_slice(plan: ev.PolicyRolloutStarted, agent_id: str) -> bool:
    if plan.agents:
        return agent_id in plan.agents
    return plan.percent is not None and bucket(agent_id) < plan.percent


# -- the rollout, folded from the policy stream ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rollout:
    plan: ev.PolicyRolloutStarted
    started_at: datetime
    ended: Literal["promoted", "rolled_back"] | None = None
    end: ev.PolicyRolloutPromoted | ev.PolicyRolloutRolledBack | None = None
    ended_at: datetime | None = None
    published: bool = False  # a policy.published came after the promotion

    @property
    def active(self) -> bool:
        return self.ended is None

    @property
    def promotion_pending(self) -> bool:
        """Promoted, but the bundle is not published yet (a crash between the two appends)."""
        return self.ended == "promoted" and not self.published


@dataclass(slots=True)
class Rollouts:
    """The latest rollout and the ones before it (newest last)."""

    latest: Rollout | None = None
    ended: list[Rollout] = field(default_factory=list)


def apply_rollout_event(rollouts: Rollouts, event: StoredEvent) -> None:
    """Fold one policy-stream event. The first ending of a rollout wins; a later one is ignored."""
    at = parse_time(event.envelope.occurred_at)
    latest = rollouts.latest
    match event.payload:
        case ev.PolicyRolloutStarted() as plan:
            if latest is not None and latest.plan.rollout_id == plan.rollout_id:
                return
            if latest is not None:
                rollouts.ended = [*rollouts.ended, latest][-HISTORY:]
            rollouts.latest = Rollout(plan=plan, started_at=at)
        case ev.PolicyRolloutPromoted() as end if latest and latest.active and end.rollout_id == latest.plan.rollout_id:
            rollouts.latest = replace(latest, ended="promoted", end=end, ended_at=at)
        case ev.PolicyRolloutRolledBack() as end if (
            latest and latest.active and end.rollout_id == latest.plan.rollout_id
        ):
            rollouts.latest = replace(latest, ended="rolled_back", end=end, ended_at=at)
        case ev.PolicyBundlePublished() if latest and latest.promotion_pending:
            rollouts.latest = replace(latest, published=True)
        case _:
            pass


def ending(
    plan: ev.PolicyRolloutStarted,
    how: Literal["promoted", "rolled_back"],
    reason: str,
    readings: list[ev.SignalReading],
    *,
    trigger: str = "",
    by: Literal["controller", "operator"] = "controller",
) -> ev.PolicyRolloutPromoted | ev.PolicyRolloutRolledBack:
    """The rollout's one ending, carrying what decided it and the bundle everyone is back on."""
    said: dict[str, Any] = {
        "rollout_id": plan.rollout_id,
        "candidate_digest": plan.candidate_digest,
        "previous_digest": plan.previous_digest,
        "signals": readings,
        "reason": reason,
    }
    if how == "promoted":
        return ev.PolicyRolloutPromoted(**said)
    return ev.PolicyRolloutRolledBack(**said, trigger=trigger, by=by)


# -- signals: the slice's decisions since the rollout began ----------------------------------------

Watch = dict[str, datetime]  # trigger text -> since when it has been in breach (absent: clear)

DecisionKind = Literal["allow", "approval", "deny"]
# The intent events the signals are read from.
OBSERVED_TYPES = (
    "intent.planned",
    "approval.requested",
    "intent.authorized",
    "intent.denied",
    "intent.expired",
    "approval.expired",
)


@dataclass(slots=True)
class Sample:
    agent_id: str = ""
    planned_at: datetime | None = None
    decided_at: datetime | None = None
    kind: DecisionKind | None = None  # the first decision: a grant after a request is not another
    requested: bool = False
    closed: bool = False

    @property
    def open_approval(self) -> bool:
        return self.requested and not self.closed


@dataclass(slots=True)
class SampleBook:
    """The slice's intents, keyed by intent id, fed from the intent events, live and replayed
    alike: observing an event twice, or events out of order, comes to the same samples."""

    samples: dict[str, Sample] = field(default_factory=dict)

    def observe(self, event_type: str, intent_id: str, at: datetime, agent_id: str = "") -> None:
        sample = self.samples.setdefault(intent_id, Sample(agent_id=agent_id))
        match event_type:
            case "intent.planned":
                sample.planned_at = min(sample.planned_at or at, at)
            case "approval.requested":  # always the first decision where there is one
                sample.kind, sample.decided_at, sample.requested = "approval", at, True
            case "intent.authorized" | "intent.denied":
                if sample.kind != "approval":
                    sample.kind, sample.decided_at = ("allow" if event_type == "intent.authorized" else "deny"), at
                sample.closed = True
            case "intent.expired" | "approval.expired":
                sample.closed = True
            case _:
                pass

    def prune(self, before: datetime) -> None:
        """Forget what no window reaches any more (an open request stays: it is the backlog)."""
        for intent_id, s in list(self.samples.items()):
            last = s.decided_at or s.planned_at
            if not s.open_approval and last is not None and last < before:
                del self.samples[intent_id]


@dataclass(slots=True)
class Signals:
    """What one replica's controller keeps between ticks, for one rollout: the samples and the
    hysteresis memory. Not in the log: a restart rebuilds the samples from the intent events
    (:attr:`rollout_id` changes to say so) and starts the hysteresis memory afresh."""

    rollout_id: str | None = None
    book: SampleBook = field(default_factory=SampleBook)
    watch: Watch = field(default_factory=dict)

    def reset_for(self, rollout_id: str) -> bool:
        """Start afresh for another rollout; True when the samples must be read from the log."""
        if self.rollout_id == rollout_id:
            return False
        self.rollout_id, self.book, self.watch = rollout_id, SampleBook(), {}
        return True


def read(
    book: SampleBook, trigger: ev.RolloutTrigger, now: datetime, min_decisions: int, *, one_agent_counts: bool = False
) -> ev.SignalReading:
    """The trigger's signal now: ``value`` None while fewer than ``min_decisions`` decisions say anything.

    No one agent carries a signal: the value is the lowest the signal reads with any one agent's
    intents left out, so an agent of the slice cannot roll its candidate back by itself (flooding
    it with calls it knows are denied, or that need a person) to keep the bundle it had. Unless
    ``one_agent_counts`` (a slice named as that one agent: its signals are its own). The reading
    also says what every agent's intents read and which agent's leaving out made the difference.

    Nor can one agent hide a signal to have its candidate promoted (flooding it with calls it knows
    are allowed, or decided fast, so that the others' denials or slow decisions weigh less): the
    reading also says what the signal reads with the agent whose leaving out raises it most left
    out, and with any one other agent left out as well, the lowest of those (``hidden``). Promotion
    waits while that is above the threshold (:func:`next_step`)."""
    if trigger.signal == "approval_backlog":
        samples, every, lowest = approval_backlog(book)
        hidden = NOTHING  # a count: another agent's open requests cannot make one's fewer
    else:
        since = now - timedelta(seconds=trigger.window_s)
        decided = [s for s in book.samples.values() if s.decided_at is not None and s.decided_at >= since]
        measure = denial_rate if trigger.signal == "denial_rate" else p99_decision_ms
        samples, every, lowest, hidden = measure(decided, min_decisions, trigger.threshold)
    if one_agent_counts:
        return reading(trigger, samples, every, every, NOTHING)
    return reading(trigger, samples, every, lowest, hidden)


@dataclass(frozen=True, slots=True)
class Measure:
    """A signal over the slice's intents, ``left_out``'s left out if one was."""

    value: float | None
    left_out: str = ""


NOTHING = Measure(None)
# How many samples, the signal with every agent's intents, and the lowest with one agent's left out.
Readings = tuple[int, Measure, Measure]
# The same, and what one agent hides: the highest above ``threshold`` with that agent left out, then
# the lowest with one more left out.
RateReadings = tuple[int, Measure, Measure, Measure]


def approval_backlog(book: SampleBook) -> Readings:
    """Open requests now; leaving out the agent with the most of them is the lowest."""
    open_requests = Counter(s.agent_id for s in book.samples.values() if s.open_approval)
    total = sum(open_requests.values())
    if not open_requests:
        return 0, Measure(0.0), Measure(0.0)
    agent, most = open_requests.most_common(1)[0]
    return total, Measure(float(total)), Measure(float(total - most), agent)


def denial_rate(decided: list[Sample], least: int, threshold: float) -> RateReadings:
    """Denials over first decisions (no value under ``least`` of them)."""
    total = len(decided)
    if total < least:
        return total, NOTHING, NOTHING, NOTHING
    made = Counter(s.agent_id for s in decided)
    denials = Counter(s.agent_id for s in decided if s.kind == "deny")
    denied = sum(denials.values())
    every = denied / total
    if (agent := hangs_on(made, total, least)) is not None:
        return total, Measure(every), Measure(None, agent), NOTHING

    def without(*agents: str) -> float:
        return (denied - sum(denials[a] for a in agents)) / (total - sum(made[a] for a in agents))

    def hidden_by(suspect: str) -> float | None:
        rest = made - Counter({suspect: made[suspect]})
        if hangs_on(rest, total - made[suspect], least) is not None:
            return None
        return min(without(suspect, other) for other in rest)

    suspects = [a for a in made if without(a) > threshold]  # only these can hide a breach
    lowest = lowest_of(every, ((without(a), a) for a in made))
    return total, Measure(every), lowest, highest_hidden(threshold, lowest, ((hidden_by(a), a) for a in suspects))


def p99_decision_ms(decided: list[Sample], least: int, threshold: float) -> RateReadings:
    """Nearest-rank p99 of planned -> decision, in ms (no value under ``least`` decisions). Leaving
    out an agent with no sample at or above the p99 cannot lower it, so only those are tried; an
    agent hides a slow tail by outnumbering it, so only the three with most decisions are suspects."""
    timed = sorted(
        ((s.decided_at - s.planned_at).total_seconds() * 1000.0, s.agent_id)
        for s in decided
        if s.decided_at is not None and s.planned_at is not None
    )
    total = len(timed)
    if total < least:
        return total, NOTHING, NOTHING, NOTHING
    made = Counter(a for _, a in timed)
    every = p99_of([ms for ms, _ in timed])
    if (agent := hangs_on(made, total, least)) is not None:
        return total, Measure(every), Measure(None, agent), NOTHING

    def lowest_without(rest: list[tuple[float, str]], fallback: float) -> Measure:
        tail = sorted({a for _, a in rest[p99_rank(len(rest)) - 1 :]})
        return lowest_of(fallback, ((p99_of([ms for ms, o in rest if o != a]), a) for a in tail))

    def hidden_by(suspect: str) -> float | None:
        rest = [(ms, a) for ms, a in timed if a != suspect]
        if hangs_on(Counter(a for _, a in rest), len(rest), least) is not None:
            return None
        return lowest_without(rest, p99_of([ms for ms, _ in rest])).value

    suspects = [a for a, _ in made.most_common(3) if p99_of([ms for ms, o in timed if o != a]) > threshold]
    lowest = lowest_without(timed, every)
    return total, Measure(every), lowest, highest_hidden(threshold, lowest, ((hidden_by(a), a) for a in suspects))


def highest_hidden(threshold: float, shown: Measure, hidden: Iterable[tuple[float | None, str]]) -> Measure:
    """The highest of what suspects hide, where it is above ``threshold`` and what is ``shown``."""
    value, agent = max(((v, a) for v, a in hidden if v is not None), default=(None, ""))
    if value is None or value <= threshold or (shown.value is not None and value <= shown.value):
        return NOTHING
    return Measure(value, agent)


def hangs_on(made: Counter[str], total: int, least: int) -> str | None:
    """The agent without whose intents fewer than ``least`` remain: the signal hangs on it."""
    return next((agent for agent, n in made.items() if total - n < least), None)


def lowest_of(every: float, left_out: Iterable[tuple[float, str]]) -> Measure:
    """The lowest reading with one agent left out, where it is lower than ``every``."""
    value, agent = min(left_out, default=(every, ""))
    return Measure(value, agent) if value < every else Measure(every)


def p99_rank(n: int) -> int:
    return max(1, math.ceil(0.99 * n))  # nearest rank


def p99_of(ascending: list[float]) -> float:
    return ascending[p99_rank(len(ascending)) - 1]


def reading(
    trigger: ev.RolloutTrigger, samples: int, every: Measure, read: Measure, hidden: Measure
) -> ev.SignalReading:
    digits = 4 if trigger.signal == "denial_rate" else 3
    return ev.SignalReading(
        trigger=trigger.text,
        signal=trigger.signal,
        value=None if read.value is None else round(read.value, digits),
        threshold=trigger.threshold,
        samples=samples,
        every_agent=None if every.value is None else round(every.value, digits),
        left_out=read.left_out,
        hidden=None if hidden.value is None else round(hidden.value, digits),
        hidden_by=hidden.left_out,
    )


# -- the controller's next step -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    action: Literal["idle", "wait", "roll_back", "promote", "publish"]
    reason: str = ""
    trigger: str = ""


def breached(was: bool, value: float | None, threshold: float) -> bool:
    """Hysteresis: a breach begins above the threshold and ends only 10% below it. No value (too
    few decisions) is no breach."""
    if value is None:
        return False
    return value > threshold * (1 - HYSTERESIS) if was else value > threshold


def watch_after(watch: Watch, readings: list[ev.SignalReading], now: datetime) -> Watch:
    out: Watch = {}
    for r in readings:
        if breached(r.trigger in watch, r.value, r.threshold):
            out[r.trigger] = watch.get(r.trigger, now)
    return out


def next_step(
    rollout: Rollout | None, watch: Watch, readings: list[ev.SignalReading], now: datetime
) -> tuple[Step, Watch]:
    """What the controller does now, and the hysteresis memory to keep for the next tick.

    Roll back once a trigger has been in breach for its hold (after the cooldown); promote after
    the soak period unless a trigger is in breach; finish a promotion whose bundle is not yet
    published (a restart between the two appends)."""
    if rollout is None:
        return Step("idle"), {}
    if rollout.promotion_pending:
        return Step("publish", "the promotion's bundle is not published yet"), {}
    if not rollout.active:
        return Step("idle"), {}
    watch = watch_after(watch, readings, now)
    plan = rollout.plan
    elapsed = (now - rollout.started_at).total_seconds()
    if elapsed < plan.cooldown_s:
        return Step("wait", f"cooling down for {plan.cooldown_s - elapsed:.0f}s more"), watch
    holds = {t.text: t.hold_s for t in plan.triggers}
    by_text = {r.trigger: r for r in readings}
    for text, since in watch.items():
        if (now - since).total_seconds() >= holds.get(text, 0.0):
            r = by_text[text]
            return Step(
                "roll_back",
                f"{r.signal} was {r.value:g} (over {r.samples} samples), above {r.threshold:g}"
                f" for {(now - since).total_seconds():.0f}s: {text}",
                trigger=text,
            ), watch
    if elapsed < plan.promote_after_s:
        return Step("wait", f"soaking for {plan.promote_after_s - elapsed:.0f}s more"), watch
    if watch:
        return Step("wait", f"promotion waits: {', '.join(sorted(watch))} in breach"), watch
    for r in readings:
        if r.hidden is not None and r.hidden > r.threshold:
            return Step(
                "wait",
                f"promotion waits: {r.signal} reads {r.hidden:g} without {r.hidden_by}'s intents,"
                f" above {r.threshold:g} ({r.value:g} with them): {r.trigger}",
            ), watch
    return Step("promote", f"no trigger held in {plan.promote_after_s:g}s of soak"), watch


# -- what an operator may do while a rollout runs -------------------------------------------------


def in_progress(rollouts: Rollouts) -> Rollout | None:
    """The rollout that still decides for someone: active, or promoted but not yet published."""
    rollout = rollouts.latest
    return rollout if rollout is not None and (rollout.active or rollout.promotion_pending) else None


def blocks(rollouts: Rollouts, what: str) -> Refusal | None:
    """A bundle for everyone, or a second rollout, waits until the one in progress has ended."""
    rollout = in_progress(rollouts)
    if rollout is None:
        return None
    return Refusal(
        code="rollout_in_progress",
        reason=f"rollout {rollout.plan.rollout_id} of {rollout.plan.candidate_digest} is in progress; cannot {what}"
        " until it is promoted or rolled back (`writ policy rollout status`, `writ policy rollout abort`)",
    )


def cannot_start(enforced_digest: str | None, candidate_digest: str) -> Refusal | None:
    """A canary needs a bundle to fall back to, and a candidate that differs from it."""
    if enforced_digest is None:
        return Refusal(
            code="no_policy", reason="no bundle is enforced to fall back to; load one with `writ policy load`"
        )
    if enforced_digest == candidate_digest:
        return Refusal(code="already_enforced", reason=f"bundle {candidate_digest} is already enforced for every agent")
    return None


def latest_or_refusal(rollouts: Rollouts) -> Rollout | Refusal:
    """The rollout ``status`` describes."""
    if rollouts.latest is None:
        return Refusal(code="no_rollout", reason="no rollout has started (`writ policy rollout FILE --canary 10%`)")
    return rollouts.latest


def abortable(rollouts: Rollouts) -> Rollout | Refusal:
    """The rollout an operator may abort: only one in progress."""
    rollout = rollouts.latest
    if rollout is None or not rollout.active:
        return Refusal(code="no_rollout", reason="no rollout is in progress")
    return rollout


def abort_lost(rollouts: Rollouts, aborted: Rollout) -> Refusal | None:
    """After appending an abort: the first ending wins, so a promotion may have come first."""
    ended = rollouts.latest
    if ended is None or ended.ended != "rolled_back":
        return Refusal(code="already_promoted", reason=f"rollout {aborted.plan.rollout_id} was promoted first")
    return None


def observed_on(subject: str, plan: ev.PolicyRolloutStarted) -> tuple[str, str, str] | None:
    """(event type, intent id, agent id) of an intent event on ``subject`` that the slice's signals
    read; None for any other type, or an agent outside the slice."""
    parts = subject.split(".")
    event_type = topology.TYPE_OF_TOKEN.get(parts[-1]) if len(parts) == 5 else None
    if event_type is None or event_type not in OBSERVED_TYPES or not in_slice(plan, parts[2]):
        return None
    return event_type, parts[3], parts[2]


def one_agent_counts(plan: ev.PolicyRolloutStarted) -> bool:
    """A slice named as one agent: its signals are that agent's own (see :func:`read`)."""
    return len(plan.agents) == 1


def rollout_picture(rollout: Rollout | None, readings: list[ev.SignalReading]) -> dict[str, Any]:
    """A rollout as an operator reads it: the slice, the triggers, how it ended and why."""
    assert rollout is not None
    plan, end = rollout.plan, rollout.end
    status = "in_progress" if rollout.active else rollout.ended
    return {
        "rollout_id": plan.rollout_id,
        "status": status,
        "candidate_digest": plan.candidate_digest,
        "previous_digest": plan.previous_digest,
        "percent": plan.percent,
        "agents": plan.agents,
        "triggers": [t.text for t in plan.triggers],
        "promote_after_s": plan.promote_after_s,
        "cooldown_s": plan.cooldown_s,
        "min_decisions": plan.min_decisions,
        "started_at": rollout.started_at.isoformat().replace("+00:00", "Z"),
        "ended_at": rollout.ended_at.isoformat().replace("+00:00", "Z") if rollout.ended_at else None,
        "reason": end.reason if end else "",
        "trigger": end.trigger if isinstance(end, ev.PolicyRolloutRolledBack) else "",
        "by": end.by if isinstance(end, ev.PolicyRolloutRolledBack) else ("controller" if end else ""),
        "signals": msgspec.to_builtins(end.signals if end else readings),
    }
