"""The canary's pure rules: declaring a rollout, slice membership, the signals, and the
controller's next step with hysteresis and a cooldown; and the segmented metrics' bounded labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stored_events import stored_at
from writ.cli.render import signal_value
from writ_common import events as ev
from writ_common import metrics
from writ_common.envelope import StoredEvent
from writ_common.metrics import OTHER, BoundedLabel
from writ_policy.rollout import (
    Rollout,
    RolloutError,
    Rollouts,
    SampleBook,
    apply_rollout_event,
    bucket,
    in_slice,
    next_step,
    parse_spec,
    parse_trigger,
    read,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def plan(**overrides: object) -> ev.PolicyRolloutStarted:
    fields: dict[str, object] = {
        "rollout_id": "r1",
        "candidate_digest": "sha256:new",
        "cedar": "",
        "policy_ids": {},
        "previous_digest": "sha256:old",
        "percent": 10.0,
        "triggers": [parse_trigger("denial_rate>0.2 over 1m for 10s")],
        "promote_after_s": 300.0,
        "cooldown_s": 30.0,
        "min_decisions": 3,
    }
    fields.update(overrides)
    return ev.PolicyRolloutStarted(**fields)  # type: ignore[arg-type]


def spec(**overrides: object) -> object:
    fields: dict[str, object] = {
        "canary": "10%",
        "agents": [],
        "rollback_if": ["denial_rate>0.2 over 5m"],
        "promote_after": "30m",
        "cooldown": None,
    }
    fields.update(overrides)
    return parse_spec(**fields)  # type: ignore[arg-type]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- declaring ------------------------------------------------------------------------------------


def test_a_trigger_reads_signal_threshold_window_and_hold() -> None:
    t = parse_trigger("denial_rate > 0.2 over 5m for 30s")
    assert (t.signal, t.threshold, t.window_s, t.hold_s) == ("denial_rate", 0.2, 300.0, 30.0)
    assert t.text == "denial_rate > 0.2 over 5m for 30s"
    backlog = parse_trigger("approval_backlog>10")
    assert (backlog.signal, backlog.threshold, backlog.window_s, backlog.hold_s) == ("approval_backlog", 10, 0, 30)
    assert parse_trigger("p99_decision_ms>50").window_s == 300.0  # the default window


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("denial_rate>=0.2", "must look like"),
        ("error_rate>0.2", "no signal 'error_rate'"),
        ("denial_rate>2", "below 1"),
        ("approval_backlog>10 over 5m", "takes no window"),
        ("p99_decision_ms>50 over 5 minutes", "must look like"),
        ("p99_decision_ms>50 over 5x", "window '5x'"),
        ("p99_decision_ms>50 for 0.5y", "hold '0.5y'"),
    ],
)
def test_a_bad_trigger_is_refused_with_what_to_write(text: str, says: str) -> None:
    with pytest.raises(RolloutError, match=says):
        parse_trigger(text)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"canary": None}, "exactly one of --canary"),
        ({"agents": ["a"]}, "exactly one of --canary"),
        ({"canary": "0%"}, "above 0%"),
        ({"canary": "150%"}, "at most 100%"),
        ({"canary": "ten"}, "must be a percentage"),
        ({"canary": None, "agents": ["Bad.Agent"]}, "not an agent id"),
        ({"rollback_if": []}, "at least one --rollback-if"),
        ({"rollback_if": ["approval_backlog>3", "approval_backlog>3"]}, "declared twice"),
        ({"promote_after": "30s", "cooldown": "1m"}, "longer than 0s and than --cooldown"),
        ({"min_decisions": 0}, "at least 1"),
    ],
)
def test_a_bad_declaration_is_refused_before_anything_starts(overrides: dict[str, object], says: str) -> None:
    with pytest.raises(RolloutError, match=says):
        spec(**overrides)


def test_a_declaration_with_defaults() -> None:
    declared = spec()
    assert declared.percent == 10.0  # type: ignore[attr-defined]
    assert declared.promote_after_s == 1800.0  # type: ignore[attr-defined]
    assert declared.cooldown_s == 60.0  # type: ignore[attr-defined]
    assert spec(promote_after="20s").cooldown_s == 10.0  # type: ignore[attr-defined]


# -- the slice ----------------------------------------------------------------------------------


def test_the_slice_is_a_stable_hash_bucket_and_a_wider_canary_keeps_the_narrower() -> None:
    agents = [f"agent-{i}" for i in range(2000)]
    ten = {a for a in agents if in_slice(plan(percent=10.0), a)}
    thirty = {a for a in agents if in_slice(plan(percent=30.0), a)}
    assert 150 < len(ten) < 250 and 500 < len(thirty) < 700
    assert ten <= thirty
    assert bucket("agent-7") == bucket("agent-7")  # a pure function of the id: every replica, every restart
    assert all(in_slice(plan(percent=100.0), a) for a in agents)


def test_a_named_slice_is_exactly_its_agents() -> None:
    named = plan(percent=None, agents=["billing-bot"])
    assert in_slice(named, "billing-bot")
    assert not in_slice(named, "billing-bot-2")


# -- signals ----------------------------------------------------------------------------------


def test_denial_rate_counts_first_decisions_in_the_window_and_needs_enough_of_them() -> None:
    book = SampleBook()
    trigger = parse_trigger("denial_rate>0.2 over 1m")
    for i, kind in enumerate(["intent.denied", "intent.authorized"]):
        book.observe("intent.planned", f"i{i}", at(i))
        book.observe(kind, f"i{i}", at(i + 0.01))
    assert read(book, trigger, at(10), 3, one_agent_counts=True).value is None  # two decisions say nothing yet
    book.observe("approval.requested", "i2", at(3))
    book.observe("intent.authorized", "i2", at(4))  # the grant ends the request: not a second decision
    book.observe("intent.denied", "i0", at(1))  # a redelivered event changes nothing
    r = read(book, trigger, at(10), 3, one_agent_counts=True)
    assert (r.value, r.samples) == (0.3333, 3)
    assert read(book, trigger, at(62), 3, one_agent_counts=True).value is None  # i0 and i1 slid out of the window


def test_backlog_and_p99_latency() -> None:
    book = SampleBook()
    for i in range(100):
        book.observe("intent.planned", f"i{i}", at(i))
        book.observe("intent.authorized", f"i{i}", at(i + (0.5 if i == 99 else 0.01)))
    p99 = read(book, parse_trigger("p99_decision_ms>50 over 10m"), at(100), 5, one_agent_counts=True)
    assert p99.value == pytest.approx(10.0, abs=0.01)
    book.observe("intent.authorized", "i98", at(98 + 0.9))  # later events do not move the first decision
    book.observe("approval.requested", "a1", at(100))
    book.observe("approval.requested", "a2", at(100))
    book.observe("approval.expired", "a2", at(101))
    backlog = read(book, parse_trigger("approval_backlog>0"), at(102), 5, one_agent_counts=True)
    assert (backlog.value, backlog.samples) == (1.0, 1)
    book.prune(at(200))
    assert set(book.samples) == {"a1"}  # an open request stays: it is the backlog


def decisions(book: SampleBook, agent: str, kinds: list[str], *, start: float = 0.0, took: float = 0.01) -> None:
    """``agent``'s intents, one per kind (``intent.denied``, ``intent.authorized``, ``approval.requested``)."""
    for i, kind in enumerate(kinds):
        intent = f"{agent}-{start + i}"
        book.observe("intent.planned", intent, at(start + i), agent)
        book.observe(kind, intent, at(start + i + took), agent)


def test_one_agent_flooding_denied_calls_does_not_roll_back_its_canary() -> None:
    """An agent of the slice that wants its old permissions back floods calls the candidate denies:
    by all decisions the rate is 0.92; no one agent carries it, so it reads as the others' 0.1."""
    book = SampleBook()
    for agent in ("a", "b", "c"):
        decisions(book, agent, ["intent.authorized"] * 9 + ["intent.denied"])
    decisions(book, "mallory", ["intent.denied"] * 300, start=10)
    trigger = parse_trigger("denial_rate>0.5 over 10m")
    assert read(book, trigger, at(400), 5, one_agent_counts=True).value == 0.9182  # what it was
    r = read(book, trigger, at(400), 5)
    assert (r.value, r.samples) == (0.1, 330)
    assert (r.every_agent, r.left_out) == (0.9182, "mallory")  # who moved it, for the operator
    assert (r.hidden, r.hidden_by) == (None, ""), "nobody hides anything: the others read 0.1"


def test_one_agent_flooding_allowed_calls_does_not_get_its_canary_promoted() -> None:
    """The other way: an agent of the slice that wants the candidate kept floods it with calls it
    allows, so the others' denials weigh less. The rate with it reads 0.05 and rolls nothing back;
    the reading says what it hides (0.8 without mallory), and promotion waits on that."""
    trigger = parse_trigger("denial_rate>0.5 over 10m")
    diluted = SampleBook()
    for agent in ("a", "b", "c"):
        decisions(diluted, agent, ["intent.denied"] * 8 + ["intent.authorized"] * 2)
    honest = read(diluted, trigger, at(400), 5)
    assert (honest.value, honest.hidden) == (0.8, None), "a harm they all see: it reads in full already"
    decisions(diluted, "mallory", ["intent.authorized"] * 300, start=10)
    r = read(diluted, trigger, at(400), 5)
    assert (r.value, r.every_agent) == (0.05, 0.0727)
    assert (r.hidden, r.hidden_by) == (0.8, "mallory")
    assert read(diluted, trigger, at(400), 5, one_agent_counts=True).hidden is None, "a slice of one: its own"
    rollout = Rollout(plan=plan(), started_at=T0)
    step, _ = next_step(rollout, {}, [r], at(300))
    assert step.action == "wait", step
    assert step.reason == (
        "promotion waits: denial_rate reads 0.8 without mallory's intents, above 0.5 (0.05 with them):"
        " denial_rate>0.5 over 10m"
    )
    # Hiding needs the others to agree: a harm only one of them sees reads as that one agent's.
    alone = SampleBook()
    decisions(alone, "a", ["intent.denied"] * 8 + ["intent.authorized"] * 2)
    for agent in ("b", "c"):
        decisions(alone, agent, ["intent.authorized"] * 10)
    decisions(alone, "mallory", ["intent.authorized"] * 300, start=10)
    assert read(alone, trigger, at(400), 5).hidden is None
    # And flooding denied calls does not make it look hidden either (the attack above, reversed).
    flood = SampleBook()
    for agent in ("a", "b", "c"):
        decisions(flood, agent, ["intent.authorized"] * 10)
    decisions(flood, "mallory", ["intent.denied"] * 300, start=10)
    assert read(flood, trigger, at(400), 5).hidden is None


def test_a_harm_every_agent_sees_still_reads_in_full() -> None:
    book = SampleBook()
    for agent in ("a", "b", "c"):
        decisions(book, agent, ["intent.denied"] * 4)
    everyone = read(book, parse_trigger("denial_rate>0.5 over 10m"), at(100), 5)
    assert (everyone.value, everyone.every_agent, everyone.left_out) == (1.0, 1.0, "")
    # A signal that hangs on one agent (the others alone too few to say anything) reads nothing.
    thin = SampleBook()
    decisions(thin, "mallory", ["intent.denied"] * 50)
    decisions(thin, "a", ["intent.denied"] * 2, start=60)
    assert read(thin, parse_trigger("denial_rate>0.5 over 10m"), at(100), 5).value is None


def test_one_agent_cannot_fill_the_backlog_or_the_p99_alone() -> None:
    book = SampleBook()
    decisions(book, "mallory", ["approval.requested"] * 40)  # each waits for a person
    decisions(book, "a", ["approval.requested"] * 2, start=50)
    decisions(book, "b", ["approval.requested"], start=60)
    backlog = read(book, parse_trigger("approval_backlog>10"), at(100), 5)
    assert (backlog.value, backlog.samples, backlog.every_agent, backlog.left_out) == (3.0, 43, 43.0, "mallory")
    assert read(book, parse_trigger("approval_backlog>10"), at(100), 5, one_agent_counts=True).value == 43.0
    slow = SampleBook()
    for agent in ("a", "b", "c"):
        decisions(slow, agent, ["intent.authorized"] * 50, took=0.005)
    decisions(slow, "mallory", ["intent.denied"] * 20, start=200, took=2.0)  # arguments that take Cedar long
    p99 = parse_trigger("p99_decision_ms>100 over 10m")
    assert read(slow, p99, at(300), 5, one_agent_counts=True).value == pytest.approx(2000.0, abs=1)
    assert read(slow, p99, at(300), 5).value == pytest.approx(5.0, abs=0.1)
    # A slow tail two agents see, outnumbered by one agent's fast decisions: hidden, and said so.
    hid = SampleBook()
    for agent in ("a", "b"):
        decisions(hid, agent, ["intent.authorized"] * 5, took=2.0)
    decisions(hid, "c", ["intent.authorized"] * 5, took=0.005)
    decisions(hid, "mallory", ["intent.authorized"] * 2000, start=20, took=0.005)
    r = read(hid, parse_trigger("p99_decision_ms>100 over 1h"), at(2100), 5)
    assert r.value == pytest.approx(5.0, abs=0.1)
    assert r.hidden == pytest.approx(2000.0, abs=1) and r.hidden_by == "mallory"
    assert read(slow, p99, at(300), 5).left_out == "mallory"


def test_events_out_of_order_come_to_the_same_sample() -> None:
    book = SampleBook()
    book.observe("intent.authorized", "i", at(5))  # live, before the replay of the request
    book.observe("approval.requested", "i", at(2))
    book.observe("intent.planned", "i", at(1))
    sample = book.samples["i"]
    assert (sample.kind, sample.decided_at, sample.open_approval) == ("approval", at(2), False)


# -- the controller ---------------------------------------------------------------------------


def reading(value: float | None, text: str = "denial_rate>0.2 over 1m for 10s") -> ev.SignalReading:
    return ev.SignalReading(trigger=text, signal="denial_rate", value=value, threshold=0.2, samples=10)


def test_a_breach_rolls_back_only_after_its_hold_and_not_during_the_cooldown() -> None:
    rollout = Rollout(plan=plan(), started_at=T0)
    step, watch = next_step(rollout, {}, [reading(0.9)], at(5))
    assert step.action == "wait" and "cooling down" in step.reason
    step, watch = next_step(rollout, watch, [reading(0.9)], at(14))  # held 9s of 10 (and cooling down)
    assert step.action == "wait"
    step, watch = next_step(rollout, watch, [reading(0.9)], at(31))  # out of the cooldown, held 26s
    assert step.action == "roll_back"
    assert step.trigger == "denial_rate>0.2 over 1m for 10s"
    assert "denial_rate was 0.9 (over 10 samples), above 0.2" in step.reason


def test_hysteresis_a_breach_ends_only_well_below_the_threshold() -> None:
    rollout = Rollout(plan=plan(cooldown_s=0.0), started_at=T0)
    step, watch = next_step(rollout, {}, [reading(0.25)], at(1))
    assert step.action == "wait" and watch
    step, watch = next_step(rollout, watch, [reading(0.19)], at(5))  # below 0.2, above 0.18: still in breach
    assert watch
    step, watch = next_step(rollout, watch, [reading(0.19)], at(11))
    assert step.action == "roll_back"
    step, watch = next_step(rollout, {"denial_rate>0.2 over 1m for 10s": at(1)}, [reading(0.17)], at(11))
    assert (step.action, watch) == ("wait", {})
    step, watch = next_step(rollout, {}, [reading(0.19)], at(12))  # not in breach: 0.19 does not start one
    assert watch == {}
    _, watch = next_step(rollout, {"denial_rate>0.2 over 1m for 10s": at(1)}, [reading(None)], at(12))
    assert watch == {}  # too few decisions: no breach


def test_a_healthy_canary_is_promoted_after_the_soak_unless_a_trigger_is_in_breach() -> None:
    rollout = Rollout(plan=plan(), started_at=T0)
    assert next_step(rollout, {}, [reading(0.1)], at(299))[0].action == "wait"
    step, _ = next_step(rollout, {}, [reading(0.1)], at(300))
    assert step.action == "promote"
    step, _ = next_step(rollout, {}, [reading(0.3)], at(301))
    assert step.action == "wait" and "in breach" in step.reason
    step, _ = next_step(rollout, {}, [reading(None)], at(301))
    assert step.action == "promote"  # no traffic in the slice is no breach


def envelope_of(payload: ev.Payload, seq: int, when: datetime) -> StoredEvent:
    return stored_at(payload, seq, when, service="policy")


def test_the_fold_keeps_the_first_ending_and_knows_a_promotion_not_yet_published() -> None:
    rollouts = Rollouts()
    apply_rollout_event(rollouts, envelope_of(plan(), 1, at(0)))
    assert rollouts.latest is not None and rollouts.latest.active
    promoted = ev.PolicyRolloutPromoted(rollout_id="r1", candidate_digest="sha256:new")
    apply_rollout_event(rollouts, envelope_of(promoted, 2, at(300)))
    late_abort = ev.PolicyRolloutRolledBack(rollout_id="r1", candidate_digest="sha256:new", by="operator")
    apply_rollout_event(rollouts, envelope_of(late_abort, 3, at(301)))
    assert rollouts.latest.ended == "promoted" and rollouts.latest.promotion_pending
    assert next_step(rollouts.latest, {}, [], at(302))[0].action == "publish"
    published = ev.PolicyBundlePublished(policy_digest="sha256:new", cedar="", policy_ids={})
    apply_rollout_event(rollouts, envelope_of(published, 4, at(302)))
    assert not rollouts.latest.promotion_pending
    assert next_step(rollouts.latest, {}, [], at(303))[0].action == "idle"
    apply_rollout_event(rollouts, envelope_of(plan(rollout_id="r2"), 5, at(400)))
    assert [r.plan.rollout_id for r in rollouts.ended] == ["r1"]
    assert rollouts.latest.started_at == at(400)


# -- segmented metrics: bounded label cardinality -------------------------------------------------


def test_label_values_past_the_limit_are_counted_as_other() -> None:
    agents = BoundedLabel(2)
    assert [agents(a) for a in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER, "a", OTHER, "b"]


def test_a_segment_is_bounded_per_label_and_dashed_where_unknown() -> None:
    assert metrics.segment(None, None, None) == ("-", "-", "-")
    agent, server, tool = metrics.segment("seg-agent", "seg-server", "seg-tool")
    assert (agent, server, tool) == ("seg-agent", "seg-server", "seg-tool")


def test_the_status_says_who_moved_a_signal_and_who_hides_one() -> None:
    plain = {"value": 0.1, "every_agent": 0.1, "left_out": "", "hidden": None, "hidden_by": ""}
    assert signal_value(plain) == "0.1"
    both = {**plain, "value": 0.1304, "every_agent": 0.2308, "left_out": "alice", "hidden": 1.0, "hidden_by": "mallory"}
    assert signal_value(both) == "0.1304 (0.2308 counting alice; 1 without mallory: promotion waits)"
    assert signal_value({"value": None, "threshold": 0.5}) == "-", "a reading stored before either was recorded"
