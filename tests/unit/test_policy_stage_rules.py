"""The rules that sat inside policy's handlers, as pure functions: "already decided?", fail-closed
rate counting, re-deciding a waiting request under a new bundle, recheck, the approval expiry
and visibility rules, the rollout guards, and the folded policy state. No broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from test_layering import IO, KIT, ROOT, SDK, imports, modules_of

from stored_events import stored_at
from writ.sdk import new_intent
from writ_common import events as ev
from writ_common import subjects, topology
from writ_common.approvals import Approver
from writ_common.envelope import Producer, StoredEvent, decode, encode, make_envelope
from writ_common.errors import Refusal
from writ_common.fold import IntentView, fold_intent
from writ_common.ids import derive_intent_id
from writ_policy import approvals, domain
from writ_policy import rollout as rules
from writ_policy.approvals import SignedDecision
from writ_policy.decisions import Decisions
from writ_policy.domain import RateExceeded, RateLimit, Uncounted, compile_bundle, decide
from writ_policy.rollout import Rollouts, apply_rollout_event, bucket
from writ_policy.state import PolicyState

pytestmark = pytest.mark.unit

PRODUCER = Producer(service="test", instance="t", version="0")
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
PERMIT_ALL = '@id("all")\npermit(principal, action, resource);\n'
FORBID_ALL = PERMIT_ALL + '@id("stop")\nforbid(principal, action, resource);\n'
ASK = '@id("ask")\n@approval("ops")\n@ttl("60")\npermit(principal, action, resource);\n'
LIMITED = '@id("few")\n@rate_limit("2/1m")\npermit(principal, action, resource);\n'


def history(*later: ev.Payload, agent: str = "bot", planned: bool = True) -> list[StoredEvent]:
    intent = new_intent(agent, "srv/write", {"n": 1}, idempotency_key="k1")
    intent_id = derive_intent_id(agent, "k1")
    payloads: list[ev.Payload] = [intent, ev.IntentAuthenticated(key_id="k", owner="alice", teams=[])]
    if planned:
        annotations = ev.ToolAnnotations()
        payloads.append(
            ev.IntentPlanned(server="srv", tool="write", tool_digest="t", args_digest="a", annotations=annotations)
        )
    payloads += later
    return [
        decode(encode(make_envelope(p, producer=PRODUCER, intent_id=intent_id, agent_id=agent)), seq=seq)
        for seq, p in enumerate(payloads, 1)
    ]


def view(*later: ev.Payload, **kw: object) -> IntentView:
    return fold_intent(history(*later, **kw))  # type: ignore[arg-type]


def asked(agent: str = "bot") -> ev.ApprovalRequested:
    request = decide(view(agent=agent), compile_bundle(ASK), now=NOW)
    assert isinstance(request, ev.ApprovalRequested)
    return request


# -- deciding ---------------------------------------------------------------------------------------


def test_only_a_plan_without_a_decision_is_decided_again_never_twice() -> None:
    assert domain.needs_decision(view())
    assert not domain.needs_decision(view(planned=False))
    assert not domain.needs_decision(view(asked()))
    authorized = ev.IntentAuthorized(policy_digest="d", policy_ids=["all"], reasons=["permitted by all"])
    assert not domain.needs_decision(view(authorized))


def test_a_call_that_could_not_be_counted_is_not_decided_fail_closed() -> None:
    bundle = compile_bundle(LIMITED)
    decision = decide(view(), bundle, now=NOW)
    assert isinstance(decision, ev.IntentAuthorized)
    assert domain.rate_limits_for(decision, bundle) == [RateLimit("few", 2, 60)]
    outcome = domain.counted(view(), decision, Uncounted("rate limit store unavailable: refused"))
    assert outcome == Refusal(
        code="rate_store_unavailable", reason="not authorizing without counting: rate limit store unavailable: refused"
    )
    assert domain.counted(view(), decision, None) is decision
    full = domain.counted(view(), decision, RateExceeded(limit=RateLimit("few", 2, 60), count=2, retry_after_s=4.2))
    assert isinstance(full, ev.IntentDenied) and (full.code, full.retry_after_s) == ("rate_limited", 5)


def test_a_waiting_request_ends_denied_only_if_a_new_bundle_forbids_the_call() -> None:
    waiting = view(asked())
    request = waiting.approval
    assert request is not None
    same = compile_bundle(ASK)
    assert request.policy_digest == same.digest
    assert domain.redecision(waiting, same, now=NOW) == []  # decided under this very bundle
    assert domain.redecision(waiting, None, now=NOW) == []
    assert domain.redecision(waiting, compile_bundle(PERMIT_ALL), now=NOW) == []  # a grant cannot revive it
    [denied] = domain.redecision(waiting, compile_bundle(FORBID_ALL), now=NOW)
    assert isinstance(denied, ev.IntentDenied) and denied.code == "forbidden"
    assert denied.reason.endswith("(the policy changed while the call waited for approval)")
    expired = ev.IntentExpired(stage="authorize", reason="late")
    assert domain.redecision(view(asked(), expired), compile_bundle(FORBID_ALL), now=NOW) == []


def test_recheck_says_whether_the_permit_still_holds() -> None:
    assert domain.recheck(view(planned=False), "i1", compile_bundle(PERMIT_ALL), now=NOW) == Refusal(
        code="not_found", reason="intent 'i1' has no plan to decide on"
    )
    holds = domain.recheck(view(), "i1", compile_bundle(ASK), now=NOW)
    assert isinstance(holds, dict) and holds["holds"] and holds["code"] == "ok"
    gone = domain.recheck(view(), "i1", compile_bundle(FORBID_ALL), now=NOW)
    assert isinstance(gone, dict) and not gone["holds"] and gone["code"] == "forbidden"
    none = domain.recheck(view(), "i1", None, now=NOW)
    assert isinstance(none, dict) and (none["code"], none["policy_digest"]) == ("no_policy", None)


# -- approvals ----------------------------------------------------------------------------------------


def test_a_request_runs_out_after_its_time_and_only_an_open_one_expires() -> None:
    request = asked()
    expires = datetime.fromisoformat(request.expires_at.replace("Z", "+00:00"))
    assert not approvals.ran_out(request, expires)
    assert approvals.ran_out(request, expires + timedelta(milliseconds=1))
    waiting = view(request)
    assert approvals.expiry(waiting, expires) == []
    ended = approvals.expiry(waiting, expires + timedelta(seconds=1))
    assert [type(e) for e in ended] == [ev.ApprovalExpired, ev.IntentExpired]
    denied = ev.IntentDenied(policy_digest=None, policy_ids=[], code="forbidden", reason="forbidden: x")
    assert approvals.expiry(view(request, denied), expires + timedelta(seconds=1)) == []


def test_a_decided_request_takes_no_more_decisions() -> None:
    assert approvals.not_open(view(asked()), "i1") is None
    denied = ev.IntentDenied(policy_digest=None, policy_ids=[], code="approval_denied", reason="approval_denied: x")
    refusal = approvals.not_open(view(asked(), denied), "i1")
    assert refusal is not None and refusal.code == "not_pending" and "'i1' is denied" in refusal.reason


def test_who_sees_which_request() -> None:
    carol = Approver("carol", "pk", "kid", ("ops",), True)
    directory = {"carol": carol}
    assert approvals.groups_of(directory, None) is None  # an operator sees everything
    assert approvals.groups_of(directory, "carol") == ("ops",)
    assert approvals.groups_of(directory, "mallory") == Refusal(
        code="unknown_approver", reason="no approver 'mallory' is registered"
    )
    waiting = view(asked())
    assert approvals.visible(waiting, None) and approvals.visible(waiting, ("ops",))
    assert not approvals.visible(waiting, ("payments",))
    assert not approvals.visible(view(), None)  # nothing requested
    assert approvals.hidden_from(waiting, "carol", ("ops",)) is None
    assert approvals.hidden_from(waiting, "dave", ("payments",)) == Refusal(
        code="forbidden", reason="'dave' is not in group 'ops'"
    )


def test_an_approver_speaks_only_for_itself() -> None:
    assert approvals.speaks_for("carol", None) is None
    assert approvals.speaks_for("carol", "carol") is None
    refusal = approvals.speaks_for("carol", "dave")
    assert refusal is not None and refusal.code == "approver_mismatch"
    signed = SignedDecision(
        intent_id="i",
        agent_id="bot",
        approver_id="dave",
        decision="grant",
        approval_digest="d",
        signed_at="t",
        signature="s",
    )
    record = approvals.refused(signed, refusal)
    assert (record.code, record.reason) == ("approver_mismatch", str(refusal))


# -- rollouts ---------------------------------------------------------------------------------------


def started(**overrides: object) -> ev.PolicyRolloutStarted:
    fields: dict[str, object] = {
        "rollout_id": "r1",
        "candidate_digest": compile_bundle(FORBID_ALL).digest,
        "cedar": FORBID_ALL,
        "policy_ids": {},
        "previous_digest": compile_bundle(PERMIT_ALL).digest,
        "percent": 50.0,
        "triggers": [rules.parse_trigger("denial_rate>0.2 over 1m for 10s")],
        "promote_after_s": 300.0,
    }
    fields.update(overrides)
    return ev.PolicyRolloutStarted(**fields)  # type: ignore[arg-type]


def test_while_a_rollout_runs_nothing_else_is_loaded_for_everyone() -> None:
    rollouts = Rollouts()
    assert rules.blocks(rollouts, "load") is None
    assert rules.latest_or_refusal(rollouts) == Refusal(
        code="no_rollout", reason="no rollout has started (`writ policy rollout FILE --canary 10%`)"
    )
    assert rules.abortable(rollouts) == Refusal(code="no_rollout", reason="no rollout is in progress")
    apply_rollout_event(rollouts, stored_at(started(), 1, NOW, service="policy"))
    refusal = rules.blocks(rollouts, "load a bundle for every agent")
    assert refusal is not None and refusal.code == "rollout_in_progress" and "rollout r1" in refusal.reason
    assert rules.abortable(rollouts) is rollouts.latest
    latest = rollouts.latest
    assert latest is not None
    promoted = ev.PolicyRolloutPromoted(rollout_id="r1", candidate_digest=latest.plan.candidate_digest)
    apply_rollout_event(rollouts, stored_at(promoted, 2, NOW, service="policy"))
    assert rules.abort_lost(rollouts, latest) == Refusal(
        code="already_promoted", reason="rollout r1 was promoted first"
    )
    assert rules.blocks(rollouts, "load") is not None  # promoted, not yet published
    published = ev.PolicyBundlePublished(policy_digest=latest.plan.candidate_digest, cedar=FORBID_ALL, policy_ids={})
    apply_rollout_event(rollouts, stored_at(published, 3, NOW, service="policy"))
    assert rules.in_progress(rollouts) is None and rules.blocks(rollouts, "load") is None


def test_a_canary_needs_a_bundle_to_fall_back_to_and_a_different_candidate() -> None:
    assert rules.cannot_start(None, "sha256:b") == Refusal(
        code="no_policy", reason="no bundle is enforced to fall back to; load one with `writ policy load`"
    )
    refusal = rules.cannot_start("sha256:b", "sha256:b")
    assert refusal is not None and refusal.code == "already_enforced"
    assert rules.cannot_start("sha256:a", "sha256:b") is None


def test_the_signals_read_only_observed_types_of_agents_in_the_slice() -> None:
    plan = started(percent=None, agents=["inside"])
    authorized = topology.ROUTE["intent.authorized"].token
    assert rules.observed_on(f"{subjects.INTENT_PREFIX}.inside.i1.{authorized}", plan) == (
        "intent.authorized",
        "i1",
        "inside",
    )
    assert rules.observed_on(f"{subjects.INTENT_PREFIX}.outside.i1.{authorized}", plan) is None
    submitted = topology.ROUTE["intent.submitted"].token
    assert rules.observed_on(f"{subjects.INTENT_PREFIX}.inside.i1.{submitted}", plan) is None
    assert rules.observed_on("not.an.intent", plan) is None


# -- the folded policy state ----------------------------------------------------------------------


def test_the_state_follows_bundle_shadow_and_canary_and_decides_by_slice() -> None:
    state = PolicyState()
    assert state.enforced_for("bot") is None and state.current_digest is None
    old, new = compile_bundle(PERMIT_ALL), compile_bundle(FORBID_ALL)
    events: list[ev.Payload] = [
        ev.PolicyBundlePublished(policy_digest=old.digest, cedar=PERMIT_ALL, policy_ids=old.names),
        ev.PolicyShadowPublished(policy_digest=new.digest, cedar=FORBID_ALL, policy_ids=new.names),
    ]
    for seq, payload in enumerate(events, 1):
        state.apply(stored_at(payload, seq, NOW, service="policy"))
    assert state.current_digest == old.digest and state.shadow is not None and state.shadow.digest == new.digest
    state.apply(stored_at(ev.PolicyShadowStopped(policy_digest="sha256:other"), 3, NOW, service="policy"))
    assert state.shadow is not None  # another bundle's stop leaves this shadow on
    state.apply(stored_at(ev.PolicyShadowStopped(policy_digest=new.digest), 4, NOW, service="policy"))
    assert state.shadow is None
    inside = next(a for a in (f"a{n}" for n in range(100)) if bucket(a) < 50.0)
    outside = next(a for a in (f"a{n}" for n in range(100)) if bucket(a) >= 50.0)
    state.apply(stored_at(started(percent=50.0), 5, NOW, service="policy"))
    assert state.enforced_for(inside) is state.candidates[new.digest]
    assert state.enforced_for(outside) is state.current
    assert state.enforced_for(None) is state.current
    promoted = ev.PolicyRolloutPromoted(rollout_id="r1", candidate_digest=new.digest)
    state.apply(stored_at(promoted, 6, NOW, service="policy"))
    assert state.enforced_for(outside) is state.candidates[new.digest]  # promoted: everyone, until published


# -- policy's rule modules stay pure ----------------------------------------------------------------

POLICY_RULES = ROOT / "services" / "policy" / "src" / "writ_policy"


@pytest.mark.parametrize("module", ["domain", "approvals", "rollout", "state", "whatif", "schema"])
def test_policys_rule_modules_import_no_io(module: str) -> None:
    kit_io = {m for m in modules_of(KIT) | modules_of(SDK) if m.split(".")[-1] not in ("stranded", "faults")}
    own = {f"writ_policy.{m}" for m in ("domain", "approvals", "rollout", "state", "whatif", "schema")}
    touched = sorted(
        name
        for name in imports(POLICY_RULES / f"{module}.py")
        if name.split(".")[0] in IO
        or name in kit_io
        or name.rsplit(".", 1)[0] in kit_io
        or (name.startswith("writ_policy.") and name not in own)
    )
    assert touched == []


class CatchingUp:
    """A policy stream follower a load behind: catching up puts ``loaded`` in force."""

    def __init__(self, state: PolicyState, loaded: str | None) -> None:
        self.state, self.loaded, self.asked = state, loaded, 0

    async def ensure_fresh(self, timeout: float = 5.0) -> bool:
        self.asked += 1
        if self.loaded is not None:
            self.state.current = compile_bundle(self.loaded)
        return True


@pytest.mark.asyncio
@pytest.mark.parametrize(("behind", "loaded"), [(None, PERMIT_ALL), (FORBID_ALL, PERMIT_ALL)])
async def test_a_denial_is_decided_again_once_the_replica_has_caught_up_with_the_bundles(
    behind: str | None, loaded: str
) -> None:
    state = PolicyState()
    state.current = compile_bundle(behind) if behind else None
    follower = CatchingUp(state, loaded)
    decisions = Decisions(None, state, follower, None)  # type: ignore[arg-type]
    (decision,) = await decisions.decide_intent(view())
    assert isinstance(decision, ev.IntentAuthorized), decision
    assert follower.asked == 1


@pytest.mark.asyncio
async def test_an_allow_is_decided_without_a_catch_up_and_a_denial_in_force_stays() -> None:
    state = PolicyState()
    state.current = compile_bundle(PERMIT_ALL)
    follower = CatchingUp(state, FORBID_ALL)
    (allowed,) = await Decisions(None, state, follower, None).decide_intent(view())  # type: ignore[arg-type]
    assert isinstance(allowed, ev.IntentAuthorized) and follower.asked == 0, "no round trip on the hot path"
    state.current = compile_bundle(FORBID_ALL)
    fresh = CatchingUp(state, None)  # caught up already: nothing newer in the stream
    (denied,) = await Decisions(None, state, fresh, None).decide_intent(view())  # type: ignore[arg-type]
    assert isinstance(denied, ev.IntentDenied) and denied.code == "forbidden" and fresh.asked == 1, denied
