"""Canary rollouts against the real services and nats-server: a firing trigger rolls the candidate
back by itself and the event says why; a healthy canary is promoted; a restart of the policy
service in the middle of a rollout resumes it from the log; a bad declaration changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from inprocess import DEFAULT_POLICY, Spine
from rollouts import ended, new_agent, policy

from writ.sdk import WritAgent
from writ_common import commands, metrics, subjects
from writ_common import events as ev
from writ_common.bus import last_on_subject
from writ_common.commands import CommandError
from writ_common.envelope import decode
from writ_policy.app import build as build_policy
from writ_policy.rollout import bucket

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

CLOCK = "time/get_current_time"
NO_CLOCK = DEFAULT_POLICY + (
    '\n@id("no-clock-in-the-canary")\n'
    'forbid(principal, action == Action::"call_tool", resource) when { resource.name == "get_current_time" };\n'
)
HARMLESS = DEFAULT_POLICY + (
    '\n@id("clock-reads")\npermit(principal, action == Action::"call_tool", resource)'
    ' when { resource.name == "get_current_time" };\n'
)
FAST = {"cooldown": "1s", "min_decisions": 3}


def named_in_bucket(prefix: str, *, below: float) -> str:
    """A fresh agent id whose bucket is below ``below`` (or at/above it, with a negative bound)."""
    while True:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        if (bucket(name) < below) if below > 0 else (bucket(name) >= -below):
            return name


def sample_count(histogram: Any, *labels: str) -> float:
    """How many observations one labelled child of ``histogram`` holds."""
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and tuple(sample.labels.values()) == labels:
                return float(sample.value)
    return 0.0


async def last_event(spine: Spine, subject: str) -> Any:
    msg = await last_on_subject(spine.js, subjects.POLICY_STREAM, subject)
    assert msg is not None and msg.data is not None
    return decode(msg.data, subject=subject).payload


async def no_clock_canary(spine: Spine, rollback_if: list[str]) -> tuple[WritAgent, dict[str, Any]]:
    """A new agent, alone in the slice of a candidate that forbids it the clock (soak 60s)."""
    canary = await new_agent(spine, f"canary-{uuid.uuid4().hex[:8]}")
    body = {"cedar": NO_CLOCK, "agents": [canary.agent_id], "rollback_if": rollback_if, "promote_after": "60s"}
    return canary, await policy(spine, "rollout", {**body, **FAST})


@pytest_asyncio.fixture(loop_scope="session")
async def baseline(spine: Spine) -> AsyncIterator[str]:
    """The default bundle enforced for everyone; whatever rollout a test leaves is aborted after it."""
    try:
        loaded = await policy(spine, "load", {"cedar": DEFAULT_POLICY})
    except CommandError as exc:  # already enforced: the same digest loads again fine, or a rollout is left
        raise AssertionError(f"cannot set the baseline: {exc}") from exc
    yield str(loaded["policy_digest"])
    try:
        await policy(spine, "rollout_abort")
    except CommandError as exc:
        assert exc.code == "no_rollout", exc


async def test_a_bad_declaration_is_refused_before_anything_changes(spine: Spine, baseline: str) -> None:
    head = (await spine.js.stream_info(subjects.POLICY_STREAM)).state.last_seq
    bad = [
        ({"canary": "10%", "rollback_if": ["denial_rate>2 over 5m"]}, "invalid_rollout", "below 1"),
        ({"canary": "10%", "rollback_if": ["errors>1"]}, "invalid_rollout", "no signal 'errors'"),
        ({"canary": "10%", "rollback_if": []}, "invalid_rollout", "at least one --rollback-if"),
        ({"rollback_if": ["approval_backlog>3"]}, "invalid_rollout", "exactly one of --canary"),
        ({"canary": "10%", "rollback_if": ["approval_backlog>3"], "cedar": "permit(oops"}, "invalid_policy", ""),
    ]
    for body, code, says in bad:
        with pytest.raises(CommandError) as refused:
            await policy(spine, "rollout", {"cedar": NO_CLOCK, **body})
        assert refused.value.code == code and says in str(refused.value), refused.value
    with pytest.raises(CommandError) as same:
        await policy(
            spine, "rollout", {"cedar": DEFAULT_POLICY, "canary": "10%", "rollback_if": ["approval_backlog>3"]}
        )
    assert same.value.code == "already_enforced"
    assert (await spine.js.stream_info(subjects.POLICY_STREAM)).state.last_seq == head  # nothing appended
    assert (await policy(spine, "show"))["policy_digest"] == baseline


async def test_a_canary_whose_trigger_fires_rolls_back_by_itself_and_says_why(spine: Spine, baseline: str) -> None:
    canary, started = await no_clock_canary(spine, ["denial_rate>0.5 over 30s for 1s", "approval_backlog>5"])
    assert started["status"] == "in_progress" and started["previous_digest"] == baseline
    with pytest.raises(CommandError) as busy:  # one change at a time
        await policy(spine, "load", {"cedar": HARMLESS})
    assert busy.value.code == "rollout_in_progress"
    # The slice gets the candidate, everyone else keeps the enforced bundle.
    for _ in range(3):
        denied = await canary.call(CLOCK, {"timezone": "UTC"})
        assert (denied.status, denied.policy_ids) == ("denied", ["no-clock-in-the-canary"]), denied.reason
        assert denied.policy_digest == started["candidate_digest"]
    outside = await spine.agent.call(CLOCK, {"timezone": "UTC"})
    assert (outside.status, outside.policy_digest) == ("succeeded", baseline)

    status = await ended(spine, within=10.0)  # cooldown 1s + hold 1s + a tick or two, far inside 60s
    assert (status["status"], status["by"]) == ("rolled_back", "controller")
    assert status["trigger"] == "denial_rate>0.5 over 30s for 1s"
    rolled_back = await last_event(spine, subjects.ROLLOUT_ROLLED_BACK_SUBJECT)
    assert isinstance(rolled_back, ev.PolicyRolloutRolledBack)
    assert (rolled_back.rollout_id, rolled_back.previous_digest) == (started["rollout_id"], baseline)
    assert "denial_rate was 1 (over 3 samples), above 0.5" in rolled_back.reason
    by_trigger = {s.trigger: s for s in rolled_back.signals}
    assert (by_trigger["denial_rate>0.5 over 30s for 1s"].value, by_trigger["approval_backlog>5"].value) == (1.0, 0.0)
    # Back on the enforced bundle, without anyone loading it again.
    again = await canary.call(CLOCK, {"timezone": "UTC"})
    assert (again.status, again.policy_digest) == ("succeeded", baseline)
    # The views show the rollout, why it ended and the decisions made under the candidate.
    shown = await commands.call(spine.nc, "ledger", "views_rollouts", {"limit": 5})
    row = next(r for r in shown["rollouts"] if r["rollout_id"] == started["rollout_id"])
    assert (row["status"], row["ended_by"], row["agents"]) == ("rolled_back", "controller", [canary.agent_id])
    assert row["trigger"] == "denial_rate>0.5 over 30s for 1s" and row["reason"] == rolled_back.reason
    assert row["candidate_decisions"] == {"denied": 3}
    assert {s["trigger"]: s["value"] for s in row["signals"]}["denial_rate>0.5 over 30s for 1s"] == 1.0


async def test_a_healthy_canary_is_promoted_after_its_soak(spine: Spine, baseline: str) -> None:
    inside = await new_agent(spine, named_in_bucket("canary-in", below=50.0))
    beside = await new_agent(spine, named_in_bucket("canary-in", below=50.0))  # no one agent carries a signal
    outside = await new_agent(spine, named_in_bucket("canary-out", below=-50.0))
    started = await policy(
        spine,
        "rollout",
        {
            "cedar": HARMLESS,
            "canary": "50%",
            "rollback_if": ["denial_rate>0.2 over 30s for 1s"],
            "promote_after": "3s",
            **FAST,
        },
    )
    candidate = started["candidate_digest"]
    assert started["percent"] == 50.0
    allowed = [await inside.call(CLOCK, {"timezone": "UTC"}) for _ in range(3)]
    assert [(r.status, r.policy_digest) for r in allowed] == [("succeeded", candidate)] * 3
    assert [(await beside.call(CLOCK, {"timezone": "UTC"})).status for _ in range(3)] == ["succeeded"] * 3
    assert (await outside.call(CLOCK, {"timezone": "UTC"})).policy_digest == baseline
    # The same decisions, segmented per agent and tool in the Prometheus metrics.
    labels = (inside.agent_id, "time", "get_current_time")
    assert metrics.SEGMENT_DECISIONS.labels(*labels, "allow")._value.get() == 3
    assert metrics.SEGMENT_OUTCOMES.labels(*labels, "succeeded")._value.get() == 3
    assert sample_count(metrics.SEGMENT_DECISION_SECONDS, *labels) == 3

    status = await ended(spine, within=10.0)
    assert status["status"] == "promoted" and "no trigger held" in status["reason"]
    promoted = await last_event(spine, subjects.ROLLOUT_PROMOTED_SUBJECT)
    assert isinstance(promoted, ev.PolicyRolloutPromoted)
    assert (promoted.rollout_id, promoted.previous_digest) == (started["rollout_id"], baseline)
    assert [(s.value, s.samples) for s in promoted.signals] == [(0.0, 6)]
    assert (await policy(spine, "show"))["policy_digest"] == candidate  # published for everyone
    assert (await outside.call(CLOCK, {"timezone": "UTC"})).policy_digest == candidate


async def test_a_restart_in_the_middle_of_a_rollout_resumes_it_from_the_log(spine: Spine, baseline: str) -> None:
    canary, started = await no_clock_canary(spine, ["denial_rate>0.5 over 60s for 0s"])
    # Two denials: below the three decisions a rate needs, so nothing fires yet.
    for _ in range(2):
        assert (await canary.call(CLOCK, {"timezone": "UTC"})).status == "denied"
    index = next(i for i, s in enumerate(spine.services) if s.name == "policy")
    old = spine.services[index]
    await old.stop()
    fresh = build_policy(old.settings)
    await fresh.start()
    spine.services[index] = fresh  # the fixture stops this one

    status = await policy(spine, "rollout_status")  # the fresh service folded the rollout from the log
    assert (status["rollout_id"], status["status"]) == (started["rollout_id"], "in_progress")
    third = await canary.call(CLOCK, {"timezone": "UTC"})  # still the candidate for the slice
    assert (third.status, third.policy_digest) == ("denied", started["candidate_digest"])
    status = await ended(spine, within=10.0)
    assert status["status"] == "rolled_back"
    rolled_back = await last_event(spine, subjects.ROLLOUT_ROLLED_BACK_SUBJECT)
    assert isinstance(rolled_back, ev.PolicyRolloutRolledBack)
    # The two decisions made before the restart count: read back from the intent log.
    assert [(s.value, s.samples) for s in rolled_back.signals] == [(1.0, 3)]
    assert msgspec.to_builtins(rolled_back)["trigger"] == "denial_rate>0.5 over 60s for 0s"
