"""The services' rules as pure functions over folded state: no broker, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from writ.sdk import new_intent, sign_intent
from writ_common import events as ev
from writ_common.catalog import Catalog
from writ_common.envelope import Producer, StoredEvent, decode, encode, make_envelope, parse_time
from writ_common.fold import IntentView, fold_intent
from writ_common.ids import derive_intent_id
from writ_common.signing import generate_key, key_id, public_key_b64
from writ_executor.breaker import CircuitBreaker
from writ_executor.domain import CallError, Invoke, after_error, next_step, outcome, reconcile
from writ_identity.domain import Agent, bus_revocations, check_intent
from writ_policy.domain import (
    PolicyError,
    RateExceeded,
    compile_bundle,
    decide,
    parse_rate_limit,
    rate_limited,
    rate_limits_for,
)
from writ_registry.domain import Validators, plan

pytestmark = pytest.mark.unit

PRODUCER = Producer(service="test", instance="t", version="0")
SKEW = timedelta(minutes=5)
ARGS_KEY = b"k" * 32


def stored(payload: ev.Payload, intent: ev.IntentSubmitted, seq: int) -> StoredEvent:
    intent_id = derive_intent_id(intent.agent_id, intent.idempotency_key)
    env = make_envelope(payload, producer=PRODUCER, intent_id=intent_id, agent_id=intent.agent_id)
    return decode(encode(env), seq=seq)


def view_of(intent: ev.IntentSubmitted, *later: ev.Payload) -> IntentView:
    return fold_intent([stored(p, intent, i + 1) for i, p in enumerate((intent, *later))])


KEY = generate_key()
AGENT = Agent(
    agent_id="bot",
    public_key=public_key_b64(KEY),
    key_id=key_id(public_key_b64(KEY)),
    owner="alice",
    teams=("ops",),
    acts_for=("carol",),
)


def signed(**overrides: Any) -> ev.IntentSubmitted:
    intent = new_intent(
        "bot", overrides.pop("tool", "get_current_time"), overrides.pop("arguments", {"timezone": "UTC"}), **overrides
    )
    return sign_intent(intent, KEY)


class TestIdentity:
    def test_a_correctly_signed_fresh_intent_passes(self) -> None:
        assert check_intent(view_of(signed()), AGENT, now=datetime.now(UTC), clock_skew=SKEW) is None

    def test_a_different_key_is_a_bad_signature(self) -> None:
        forged = sign_intent(new_intent("bot", "t", {}), generate_key())
        rejection = check_intent(view_of(forged), AGENT, now=datetime.now(UTC), clock_skew=SKEW)
        assert rejection is not None and rejection.code == "bad_signature"

    def test_changing_an_argument_after_signing_breaks_the_signature(self) -> None:
        intent = signed()
        tampered = ev.IntentSubmitted(
            **{**{f: getattr(intent, f) for f in intent.__struct_fields__}, "arguments": {"timezone": "Asia/Tokyo"}}
        )
        rejection = check_intent(view_of(tampered), AGENT, now=datetime.now(UTC), clock_skew=SKEW)
        assert rejection is not None and rejection.code == "bad_signature"

    def test_unknown_agent_stale_intent_and_refused_delegation(self) -> None:
        assert check_intent(view_of(signed()), None, now=datetime.now(UTC), clock_skew=SKEW).code == "unknown_agent"  # type: ignore[union-attr]
        late = check_intent(view_of(signed()), AGENT, now=datetime.now(UTC) + timedelta(hours=1), clock_skew=SKEW)
        assert late is not None and late.code == "stale_intent"
        other = check_intent(view_of(signed(on_behalf_of="mallory")), AGENT, now=datetime.now(UTC), clock_skew=SKEW)
        assert other is not None and other.code == "delegation_refused"
        assert (
            check_intent(view_of(signed(on_behalf_of="carol")), AGENT, now=datetime.now(UTC), clock_skew=SKEW) is None
        )


def catalog_with_time_tool(read_only: bool = True) -> Catalog:
    tool = ev.ToolDefinition(
        name="get_current_time",
        input_schema={"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
        annotations=ev.ToolAnnotations(read_only=read_only, destructive=not read_only, idempotent=True),
        tool_digest="sha256:t1",
    )
    catalog = Catalog()
    catalog.tools["time"] = {"get_current_time": tool}
    return catalog


class TestRegistry:
    def test_resolves_and_pins_the_tool_version(self) -> None:
        planned = plan(view_of(signed()), catalog_with_time_tool(), Validators(), args_key=ARGS_KEY)
        assert isinstance(planned, ev.IntentPlanned)
        assert (planned.server, planned.tool, planned.tool_digest) == ("time", "get_current_time", "sha256:t1")

    def test_invalid_arguments_name_the_offending_field(self) -> None:
        rejected = plan(
            view_of(signed(arguments={"timezone": 3})), catalog_with_time_tool(), Validators(), args_key=ARGS_KEY
        )
        assert isinstance(rejected, ev.IntentRejected) and rejected.code == "invalid_arguments"
        assert "timezone" in rejected.reason

    def test_unknown_and_ambiguous_tools(self) -> None:
        catalog = catalog_with_time_tool()
        assert plan(view_of(signed(tool="nope")), catalog, Validators(), args_key=ARGS_KEY).code == "unknown_tool"  # type: ignore[union-attr]
        catalog.tools["time2"] = dict(catalog.tools["time"])
        ambiguous = plan(view_of(signed()), catalog, Validators(), args_key=ARGS_KEY)
        assert isinstance(ambiguous, ev.IntentRejected) and ambiguous.code == "ambiguous_tool"
        assert isinstance(
            plan(view_of(signed(tool="time2/get_current_time")), catalog, Validators(), args_key=ARGS_KEY),
            ev.IntentPlanned,
        )


POLICY = """
@id("read-only-tools")
permit(principal, action == Action::"call_tool", resource) when { resource.read_only };
@id("destructive-needs-approval") @approval("operators") @quorum("2")
permit(principal, action == Action::"call_tool", resource) when { resource.destructive };
@id("no-tokyo")
forbid(principal, action, resource)
    when { context.arguments has timezone && context.arguments.timezone == "Asia/Tokyo" };
"""


def planned_view(read_only: bool, arguments: dict[str, Any] | None = None) -> IntentView:
    intent = signed(arguments=arguments or {"timezone": "UTC"})
    p = plan(view_of(intent), catalog_with_time_tool(read_only), Validators(), args_key=ARGS_KEY)
    return view_of(intent, ev.IntentAuthenticated(key_id="k", teams=["ops"]), p)


class TestPolicy:
    def test_read_only_is_allowed_with_the_deciding_policy_named(self) -> None:
        decision = decide(planned_view(True), compile_bundle(POLICY), now=datetime.now(UTC))
        assert isinstance(decision, ev.IntentAuthorized) and decision.policy_ids == ["read-only-tools"]

    def test_destructive_asks_for_approval_with_group_quorum_and_digest(self) -> None:
        decision = decide(planned_view(False), compile_bundle(POLICY), now=datetime.now(UTC))
        assert isinstance(decision, ev.ApprovalRequested)
        assert (decision.group, decision.quorum) == ("operators", 2)
        assert decision.approval_digest.startswith("sha256:")

    def test_an_approval_request_never_outlives_the_intents_deadline(self) -> None:
        intent = signed(deadline_seconds=30)
        p = plan(view_of(intent), catalog_with_time_tool(False), Validators(), args_key=ARGS_KEY)
        view = view_of(intent, ev.IntentAuthenticated(key_id="k"), p)
        decision = decide(view, compile_bundle(POLICY), now=datetime.now(UTC))
        assert isinstance(decision, ev.ApprovalRequested) and view.deadline is not None
        assert parse_time(decision.expires_at) <= view.deadline

    def test_forbid_wins_and_nothing_loaded_denies(self) -> None:
        decision = decide(planned_view(True, {"timezone": "Asia/Tokyo"}), compile_bundle(POLICY), now=datetime.now(UTC))
        assert isinstance(decision, ev.IntentDenied) and decision.code == "forbidden" and "no-tokyo" in decision.reason
        none = decide(planned_view(True), None, now=datetime.now(UTC))
        assert isinstance(none, ev.IntentDenied) and none.code == "no_policy"

    def test_nothing_matching_is_a_deny(self) -> None:
        bundle = compile_bundle('@id("x") permit(principal, action, resource) when { false };')
        decision = decide(planned_view(True), bundle, now=datetime.now(UTC))
        assert isinstance(decision, ev.IntentDenied) and decision.code == "no_permit"

    def test_invalid_cedar_is_refused(self) -> None:
        with pytest.raises(PolicyError):
            compile_bundle("permit(principal, action")


LIMITED = (
    '@id("read-only-tools") @rate_limit("10/1m") permit(principal, action, resource) when { resource.read_only };\n'
    '@id("approve") @approval("ops") @rate_limit("3/h") permit(principal, action, resource) when { !resource.read_only };\n'
    '@id("unlimited") permit(principal, action, resource) when { resource.read_only };\n'
)


class TestRateLimits:
    @pytest.mark.parametrize(
        ("text", "limit", "window"),
        [("10/1m", 10, 60), ("100/h", 100, 3600), ("5/30s", 5, 30), (" 7 / 2d ", 7, 172800)],
    )
    def test_the_annotation_reads_calls_per_window(self, text: str, limit: int, window: int) -> None:
        parsed = parse_rate_limit("p", text)
        assert (parsed.limit, parsed.window_s) == (limit, window)

    @pytest.mark.parametrize("text", ["10", "10/", "ten/1m", "10/1w", "0/1m", "10/0s", "-1/1m"])
    def test_a_malformed_limit_refuses_the_bundle_at_load(self, text: str) -> None:
        with pytest.raises(PolicyError, match="rate_limit"):
            compile_bundle(f'@id("p") @rate_limit("{text}") permit(principal, action, resource);')

    def test_the_deciding_permits_limits_apply_to_an_allow_and_to_an_approval(self) -> None:
        bundle = compile_bundle(LIMITED)
        allowed = decide(planned_view(True), bundle, now=datetime.now(UTC))
        assert sorted(limit.policy_id for limit in rate_limits_for(allowed, bundle)) == ["read-only-tools"]
        asked = decide(planned_view(False), bundle, now=datetime.now(UTC))
        assert [limit.text for limit in rate_limits_for(asked, bundle)] == ["3 per 1h"]

    def test_a_denial_counts_against_nothing(self) -> None:
        bundle = compile_bundle(LIMITED + '@id("no") forbid(principal, action, resource);')
        denied = decide(planned_view(True), bundle, now=datetime.now(UTC))
        assert isinstance(denied, ev.IntentDenied) and rate_limits_for(denied, bundle) == []

    def test_a_spent_window_becomes_a_denial_that_says_when_to_retry(self) -> None:
        bundle = compile_bundle(LIMITED)
        view = planned_view(True)
        allowed = decide(view, bundle, now=datetime.now(UTC))
        limit = bundle.rate_limits["read-only-tools"]
        denied = rate_limited(view, allowed, RateExceeded(limit=limit, count=10, retry_after_s=12.3))
        assert (denied.code, denied.policy_ids, denied.retry_after_s) == ("rate_limited", ["read-only-tools"], 13)
        assert "already made 10 calls to time/get_current_time in the last 1m" in denied.reason
        assert denied.reason.endswith("allows 10 per 1m; try again in 13s")


def authorized(idempotent: bool, *later: ev.Payload, deadline_seconds: float = 300) -> IntentView:
    """An intent authorized for a tool that is (or is not) idempotent, then ``later`` events."""
    intent = sign_intent(new_intent("bot", "t", {}, deadline_seconds=deadline_seconds), KEY)
    planned = ev.IntentPlanned(
        server="s", tool="t", tool_digest="d", args_digest="a", annotations=ev.ToolAnnotations(idempotent=idempotent)
    )
    return view_of(intent, planned, ev.IntentAuthorized(policy_digest="p", policy_ids=[]), *later)


def started(attempt: int) -> ev.ExecutionStarted:
    return ev.ExecutionStarted(attempt=attempt, idempotency_key="k", server="s", tool="t")


class TestExecutor:
    def test_first_delivery_invokes_attempt_one(self) -> None:
        assert next_step(authorized(False)) == Invoke(attempt=1)

    def test_interrupted_non_idempotent_call_is_outcome_unknown_never_a_second_call(self) -> None:
        assert isinstance(next_step(authorized(False, started(1))), ev.ExecutionOutcomeUnknown)

    def test_interrupted_idempotent_call_is_invoked_again(self) -> None:
        assert next_step(authorized(True, started(1))) == Invoke(attempt=2)

    def test_finished_intent_needs_nothing(self) -> None:
        done = ev.ExecutionSucceeded(attempt=1, result={}, result_digest="r", duration_ms=1)
        assert next_step(authorized(False, started(1), done)) is None


def test_fold_keeps_the_first_terminal_event() -> None:
    intent = signed()
    view = view_of(
        intent, ev.IntentRejected(stage="plan", code="x", reason="x"), ev.IntentExpired(stage="plan", reason="late")
    )
    assert view.status == "rejected" and view.terminal is not None and view.terminal.type == "intent.rejected"


class TestRetries:
    def test_a_call_that_surely_did_not_run_is_retried_with_backoff_even_if_not_idempotent(self) -> None:
        view = authorized(False, started(1))
        payload = after_error(view, 1, CallError("not_sent", "server_unavailable", "down"), now=datetime.now(UTC))
        assert isinstance(payload, ev.ExecutionAttemptFailed)
        assert 0 <= payload.retry_after_ms <= 500
        assert next_step(authorized(False, started(1), payload)) == Invoke(attempt=2)

    def test_an_interrupted_call_is_unknown_unless_the_tool_is_idempotent(self) -> None:
        error = CallError("interrupted", "call_interrupted", "connection reset")
        unknown = after_error(authorized(False, started(1)), 1, error, now=datetime.now(UTC))
        assert isinstance(unknown, ev.ExecutionOutcomeUnknown)
        retry = after_error(authorized(True, started(1)), 1, error, now=datetime.now(UTC))
        assert isinstance(retry, ev.ExecutionAttemptFailed)

    def test_attempts_are_bounded(self) -> None:
        error = CallError("not_sent", "server_unavailable", "down")
        final = after_error(authorized(True, started(3)), 3, error, now=datetime.now(UTC), max_attempts=3)
        assert isinstance(final, ev.ExecutionFailed) and "gave up after 3 attempts" in final.reason

    def test_no_retry_past_the_deadline(self) -> None:
        view = authorized(True, started(1), deadline_seconds=0.01)
        error = CallError("not_sent", "server_unavailable", "down")
        final = after_error(view, 1, error, now=datetime.now(UTC) + timedelta(seconds=1))
        assert isinstance(final, ev.ExecutionFailed) and "deadline" in final.reason

    def test_a_protocol_refusal_is_final(self) -> None:
        error = CallError("refused", "mcp_error", "unknown tool", {"code": -32602, "message": "unknown tool"})
        final = after_error(authorized(True), 1, error, now=datetime.now(UTC))
        assert isinstance(final, ev.ExecutionFailed) and not final.retryable
        assert final.result == {"error": {"code": -32602, "message": "unknown tool"}}  # the code, for the gateway


class TestCircuitBreaker:
    def test_opens_after_threshold_fails_fast_then_half_opens_and_closes(self) -> None:
        breaker = CircuitBreaker(failure_threshold=2, cooldown=5)
        assert breaker.record_failure(0, "x") is None
        opened = breaker.record_failure(1, "x")
        assert opened is not None and (opened.from_state, opened.to_state) == ("closed", "open")
        assert breaker.allow(2) == (False, None)
        allowed, half = breaker.allow(7)
        assert allowed and half is not None and half.to_state == "half_open"
        assert breaker.allow(7.1) == (False, None)  # one trial at a time
        closed = breaker.record_success()
        assert closed is not None and closed.to_state == "closed"

    def test_a_failed_trial_reopens(self) -> None:
        breaker = CircuitBreaker(failure_threshold=1, cooldown=1)
        breaker.record_failure(0, "x")
        breaker.allow(2)
        reopened = breaker.record_failure(2, "still down")
        assert reopened is not None and (reopened.from_state, reopened.to_state) == ("half_open", "open")


class TestReconcile:
    def unknown(self) -> IntentView:
        return authorized(False, started(1), ev.ExecutionOutcomeUnknown(attempt=1, reason="interrupted"))

    def test_only_an_unknown_outcome_is_settled_and_only_once(self) -> None:
        settled = reconcile(self.unknown(), "succeeded", "alice", "saw the row", None)
        assert isinstance(settled, ev.ExecutionReconciled) and settled.attempt == 1
        done = ev.ExecutionSucceeded(attempt=1, result={}, result_digest="r", duration_ms=1)
        assert str(reconcile(authorized(False, started(1), done), "failed", "a", "", None)).startswith("not_unknown")
        twice = authorized(False, started(1), ev.ExecutionOutcomeUnknown(attempt=1, reason="x"), settled)
        assert twice.reconciled == settled  # the fold keeps a person's word after the end
        assert str(reconcile(twice, "failed", "bob", "", None)).startswith("already_reconciled")

    def test_a_retry_names_its_new_intent(self) -> None:
        assert str(reconcile(self.unknown(), "retry", "a", "", None)).startswith("invalid_request")
        retry = reconcile(self.unknown(), "retry", "a", "", "in-new")
        assert isinstance(retry, ev.ExecutionReconciled) and retry.retry_intent_id == "in-new"


class TestQuarantine:
    def definition(self, name: str, description: str) -> ev.ToolDefinition:
        return ev.ToolDefinition(
            name=name,
            description=description,
            input_schema={"type": "object"},
            annotations=ev.ToolAnnotations(read_only=True),
            tool_digest=f"sha256:{name}:{description}",
        )

    def discovered(self, *tools: ev.ToolDefinition, initial: bool) -> StoredEvent:
        env = make_envelope(ev.ToolsDiscovered(server="s", tools=list(tools), initial=initial), producer=PRODUCER)
        return decode(encode(env))

    def test_a_renamed_tool_does_not_carry_the_old_ones_acceptance(self) -> None:
        catalog = Catalog()
        catalog.apply(self.discovered(self.definition("read", "v1"), initial=True))
        assert isinstance(catalog.resolve("s/read"), tuple)
        catalog.apply(self.discovered(self.definition("read_v2", "v1"), initial=False))
        assert str(catalog.resolve("s/read_v2")).startswith("quarantined_tool")
        assert str(catalog.resolve("s/read")).startswith("unknown_tool")  # the server no longer offers it
        accepted = ev.ToolAccepted(server="s", tool="read_v2", tool_digest="sha256:read_v2:v1")
        catalog.apply(decode(encode(make_envelope(accepted, producer=PRODUCER))))
        assert isinstance(catalog.resolve("s/read_v2"), tuple)

    def test_accepting_a_different_digest_than_the_one_waiting_changes_nothing(self) -> None:
        catalog = Catalog()
        catalog.apply(self.discovered(self.definition("read", "v1"), initial=True))
        catalog.apply(self.discovered(self.definition("read", "v2"), initial=False))
        stale = ev.ToolAccepted(server="s", tool="read", tool_digest="sha256:read:v3")
        catalog.apply(decode(encode(make_envelope(stale, producer=PRODUCER))))
        assert str(catalog.resolve("s/read")).startswith("quarantined_tool")


class TestSizeLimits:
    def test_arguments_over_the_limit_are_rejected_with_their_size(self) -> None:
        rejected = plan(
            view_of(signed(arguments={"timezone": "x" * 2000})),
            catalog_with_time_tool(),
            Validators(),
            args_key=ARGS_KEY,
            max_argument_bytes=1000,
        )
        assert isinstance(rejected, ev.IntentRejected) and rejected.code == "arguments_too_large"
        assert "1000" in rejected.reason

    def test_output_over_the_limit_is_not_kept_and_the_reason_says_the_call_ran(self) -> None:
        big = {"content": [{"type": "text", "text": "y" * 5000}]}
        kept = outcome(1, big, False, 1.0, max_output_bytes=10_000)
        assert isinstance(kept, ev.ExecutionSucceeded)
        dropped = outcome(1, big, False, 1.0, max_output_bytes=1000)
        assert isinstance(dropped, ev.ExecutionFailed) and dropped.code == "output_too_large"
        assert "the call ran" in dropped.reason and dropped.result is None


def test_the_bus_revokes_exactly_the_revoked_agents_bus_keys_as_of_their_revocation() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    agents = {
        "bot": AGENT,  # no bus key: nothing to revoke at the bus
        "live": replace(AGENT, agent_id="live", bus_key="ULIVE"),
        "gone": replace(AGENT, agent_id="gone", bus_key="UGONE", revoked_at=when),
        "gone-keyless": replace(AGENT, agent_id="gone-keyless", revoked_at=when),
    }
    assert bus_revocations(agents) == {"UGONE": int(when.timestamp())}
