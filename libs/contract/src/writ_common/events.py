"""The event catalog: every event payload Writ publishes, as versioned msgspec Structs.

A published ``(type, version)`` never changes. New fields get defaults; a breaking change is a
new version plus an upcaster in :mod:`writ_common.envelope`.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class Payload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Base of every event payload."""


# --- the intent's history (stream WRIT_INTENTS) ---------------------------------------------


class IntentSubmitted(Payload, frozen=True, kw_only=True):
    """An agent asks to call ``tool`` with ``arguments``; signed by the agent's key. ``operation``
    is another governed MCP operation on ``tool`` = ``SERVER/TARGET`` (writ_common.operations):
    read_resource, subscribe_resource, unsubscribe_resource, get_prompt, complete."""

    agent_id: str
    idempotency_key: str
    tool: str
    arguments: dict[str, Any]
    on_behalf_of: str | None = None
    deadline: str | None = None
    issued_at: str
    nonce: str
    operation: str = "call_tool"
    # Who signed for the caller, when not the agent's own code: ``writ-gateway/http`` (a remote MCP
    # client holding only the gateway's bearer token), ``writ-gateway/stdio``.
    via: str | None = None
    signature: str = ""

    def signed_fields(self) -> dict[str, Any]:
        """What the agent signs: every field but the signature itself; ``operation`` only when it is
        not ``call_tool`` and ``via`` only when set (so a tool call signs the fields it always did)."""
        fields = msgspec.to_builtins(self)
        fields.pop("signature", None)
        if fields.get("operation") == "call_tool":
            fields.pop("operation")
        if fields.get("via") is None:
            fields.pop("via", None)
        return dict(fields)


class IntentAuthenticated(Payload, frozen=True, kw_only=True):
    key_id: str
    owner: str | None = None
    teams: list[str] = []


Stage = Literal["authenticate", "plan", "authorize", "execute"]  # where an intent ended


class IntentRejected(Payload, frozen=True, kw_only=True):
    stage: Stage
    code: str
    reason: str


class ToolAnnotations(msgspec.Struct, frozen=True, kw_only=True):
    read_only: bool = False
    destructive: bool = True
    idempotent: bool = False
    open_world: bool = True


class IntentPlanned(Payload, frozen=True, kw_only=True):
    server: str
    tool: str
    tool_digest: str
    args_digest: str
    annotations: ToolAnnotations
    idempotency_arg: str | None = None  # the tool takes the idempotency key as this argument


class IntentAuthorized(Payload, frozen=True, kw_only=True):
    policy_digest: str
    policy_ids: list[str]
    reasons: list[str] = []


class IntentDenied(Payload, frozen=True, kw_only=True):
    policy_digest: str | None
    policy_ids: list[str]
    code: str
    reason: str
    retry_after_s: int | None = None  # rate_limited: when the window has room again


class IntentExpired(Payload, frozen=True, kw_only=True):
    stage: Stage
    reason: str


class ApprovalRequested(Payload, frozen=True, kw_only=True):
    """Policy asks people: everything an approver needs to judge, and the digest they sign."""

    approval_digest: str
    policy_digest: str
    policy_ids: list[str]
    # The approver group that may decide (on the wire "approvers", as v1 always said).
    group: str = msgspec.field(name="approvers")
    quorum: int
    expires_at: str
    owner_may_approve: bool = False
    # The picture, so an approver service subscribed to the subject needs nothing else:
    on_behalf_of: str | None = None
    tool: str = ""  # server/tool
    tool_digest: str = ""
    arguments: dict[str, Any] = {}
    args_digest: str = ""
    deadline: str | None = None


class ApproverDecision(Payload, frozen=True, kw_only=True):
    """What an approver signed, kept with the event so anyone can check it again."""

    approver_id: str
    key_id: str
    approval_digest: str
    signed_at: str
    signature: str
    comment: str = ""


class ApprovalGranted(ApproverDecision, frozen=True, kw_only=True):
    """A valid, signed grant, counted toward the quorum."""


class ApprovalDenied(ApproverDecision, frozen=True, kw_only=True):
    """A valid, signed denial: the intent ends as denied."""


class ApprovalRefused(Payload, frozen=True, kw_only=True):
    """A grant or denial that did not hold; recorded with its reason, it changes nothing else."""

    approver_id: str
    decision: str
    code: str
    reason: str


class ApprovalExpired(Payload, frozen=True, kw_only=True):
    expires_at: str
    granted_by: list[str] = []


class IntentCancelRequested(Payload, frozen=True, kw_only=True):
    """The agent asks that its intent stop: published by the agent itself (the SDK's ``cancel``, or
    the MCP gateway on a client's ``notifications/cancelled``) on its own intent's subject, where
    only its bus user may publish. A request, not an end: the stage that next acts on the intent
    ends it ``intent.cancelled``; a call already running is cancelled by the executor running it;
    an intent already ended is not changed."""

    reason: str = ""


class IntentCancelled(Payload, frozen=True, kw_only=True):
    """The intent ended because its agent asked (``intent.cancel_requested``): at ``stage``, before
    any call (``attempt`` 0), or with attempt ``attempt`` stopped (its server sent
    ``notifications/cancelled``) or not tried again."""

    stage: Stage
    reason: str
    attempt: int = 0


class ExecutionStarted(Payload, frozen=True, kw_only=True):
    attempt: int
    idempotency_key: str
    server: str
    tool: str


class ExecutionSucceeded(Payload, frozen=True, kw_only=True):
    attempt: int
    result: dict[str, Any]
    result_digest: str
    duration_ms: float


class ExecutionFailed(Payload, frozen=True, kw_only=True):
    attempt: int
    retryable: bool
    code: str
    reason: str
    result: dict[str, Any] | None = None


class ExecutionOutcomeUnknown(Payload, frozen=True, kw_only=True):
    attempt: int
    reason: str


class ExecutionReconciled(Payload, frozen=True, kw_only=True):
    """A person's word on an ``outcome_unknown`` call: it did run, it did not, or it is retried as
    a new intent (``retry_intent_id``) that goes through authorization like any new call."""

    attempt: int
    outcome: Literal["succeeded", "failed", "retry"]
    by: str
    note: str = ""
    retry_intent_id: str | None = None


class ExecutionInputRequested(Payload, frozen=True, kw_only=True):
    """During attempt ``attempt``, the tool's server asked the calling client for input: ``kind``
    ``sampling`` (an LLM completion) or ``elicitation`` (an answer from the user). ``request`` is
    what it asked, scrubbed of secret values as tool output is (None when over the output limit:
    then only its digest is kept). Beside the intent's course: the fold leaves it out."""

    attempt: int
    kind: Literal["sampling", "elicitation"]
    ask: int  # the attempt's n-th request for input, from 1
    request_digest: str
    request: dict[str, Any] | None = None


class ExecutionInputAnswered(Payload, frozen=True, kw_only=True):
    """What became of request ``ask`` of attempt ``attempt``: ``answered`` (the client's result),
    ``declined`` or ``cancelled`` (an elicitation the user refused or dismissed), or ``failed``
    (no client to ask, no answer in time, or the client's error: ``code`` and ``reason`` say
    which). ``by`` is the agent whose client answered (its subject proves it), ``via`` what it
    says it is (the gateway). The server was given the answer, or the error."""

    attempt: int
    kind: Literal["sampling", "elicitation"]
    ask: int
    outcome: Literal["answered", "declined", "cancelled", "failed"]
    by: str = ""
    via: str = ""
    answer_digest: str | None = None
    answer: dict[str, Any] | None = None
    code: str = ""
    reason: str = ""


class ExecutionAttemptFailed(Payload, frozen=True, kw_only=True):
    """One attempt failed in a way known not to have taken effect (or on an idempotent tool);
    another attempt follows after ``retry_after_ms`` unless attempts or the deadline run out."""

    attempt: int
    code: str
    reason: str
    retry_after_ms: int


# --- control streams: identity, registry, policy, ledger ------------------------------------


class AgentKeyRotated(Payload, frozen=True, kw_only=True):
    """A new key for an agent; the previous one still verifies intents issued until ``previous_valid_until``."""

    agent_id: str
    public_key: str
    previous_public_key: str
    previous_valid_until: str


class AgentRevoked(Payload, frozen=True, kw_only=True):
    """No intent issued after ``revoked_at`` is accepted from this agent."""

    agent_id: str
    revoked_at: str
    reason: str = ""


INGRESS_BUDGET_EXCEEDED = "ingress_budget_exceeded"  # why identity suspends an agent at the bus


class AgentSuspended(Payload, frozen=True, kw_only=True):
    """Identity measured the agent sending more than its ingress budget on the bus: its bus key is
    refused as of ``suspended_at`` (every node closes its connections and refuses its current user
    JWT). Not a revocation: its stored intents run as usual, and an operator reinstates it by
    issuing its bus JWT again (``agent.reinstated``)."""

    agent_id: str
    suspended_at: str
    code: str = INGRESS_BUDGET_EXCEEDED
    reason: str = ""
    msgs_per_second: float = 0.0  # measured over the window, all its connections together
    bytes_per_second: float = 0.0
    budget_msgs_per_second: float = 0.0
    budget_bytes_per_second: float = 0.0
    window_seconds: float = 0.0


class AgentReinstated(Payload, frozen=True, kw_only=True):
    """An operator issued the suspended agent's bus JWT again: it connects from ``reinstated_at``
    (the new JWT is issued strictly after the suspension, which refuses every earlier one)."""

    agent_id: str
    reinstated_at: str
    suspended_at: str  # the suspension it ends


class ApproverRegistered(Payload, frozen=True, kw_only=True):
    """A person (or approver service) who may answer approval requests for its groups."""

    approver_id: str
    public_key: str
    groups: list[str]
    active: bool = True
    bus_key: str | None = None  # the approver's NATS user public nkey, when the bus checks who listens


# Views API token scopes: "summary" reads intents, decisions, timings, codes and reasons, with tool
# arguments and results withheld; "full" reads those too; "operator" reads what "full" reads and
# the plane's own state (the console's Plane page, ``GET /plane``).
SUMMARY_SCOPE, FULL_SCOPE, OPERATOR_SCOPE = "summary", "full", "operator"
READER_SCOPES = (SUMMARY_SCOPE, FULL_SCOPE, OPERATOR_SCOPE)
VALUE_SCOPES = (FULL_SCOPE, OPERATOR_SCOPE)  # the scopes that read arguments and results


class ReaderTokenIssued(Payload, frozen=True, kw_only=True):
    """A bearer token for the views API, named for its holder. Only its sha256 is ever recorded:
    the token itself is generated and shown on the operator's machine."""

    name: str
    token_hash: str  # "sha256:<hex>" of the token's UTF-8 bytes
    scope: str = FULL_SCOPE  # one of READER_SCOPES; tokens issued before scopes existed were full


class ReaderTokenRevoked(Payload, frozen=True, kw_only=True):
    """The named views API token no longer authenticates anything."""

    name: str
    reason: str = ""


class AgentRegistered(Payload, frozen=True, kw_only=True):
    agent_id: str
    public_key: str
    owner: str
    teams: list[str] = []
    acts_for: list[str] = []
    bus_key: str | None = None  # the agent's NATS user public nkey, when the bus checks who publishes


class ServerRegistered(Payload, frozen=True, kw_only=True):
    name: str
    transport: Literal["stdio", "http"]
    command: str | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    url: str | None = None
    headers: dict[str, str] = {}
    idempotency_header: str | None = None  # http: the header through which the server takes the key
    # The most calls the server takes at once, as its operator declares it (a server that serves
    # one call at a time: 1); None: unknown, the executor's limits and latency decide.
    max_concurrency: int | None = None
    # Secrets by reference, never by value: variable or header name -> secret name. Only the
    # executor resolves them, from its own store, when it opens a session.
    secret_env: dict[str, str] = {}
    secret_headers: dict[str, str] = {}


class ServerRemoved(Payload, frozen=True, kw_only=True):
    """An operator removed a server: Writ forgets its configuration, tools and overrides; intents
    naming it are rejected ``unknown_tool``. The name may be registered again, afresh."""

    name: str
    removed_by: str = ""
    reason: str = ""


class ToolDefinition(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str | None = None
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None
    annotations: ToolAnnotations  # Writ's reading of the hints, the spec's defaults filled in (policy uses it)
    tool_digest: str
    # The tool exactly as the server listed it (MCP JSON: title, icons, _meta, annotations as given...),
    # all of it covered by tool_digest; None in definitions discovered before it was kept.
    listed: dict[str, Any] | None = None


class ToolsDiscovered(Payload, frozen=True, kw_only=True):
    """What a server offers, as discovered over MCP. At registration (``initial``) every tool is
    accepted; on a later discovery a new or changed definition waits in quarantine."""

    server: str
    tools: list[ToolDefinition]
    initial: bool = True


class ToolAccepted(Payload, frozen=True, kw_only=True):
    """An operator accepts a tool version out of quarantine."""

    server: str
    tool: str
    tool_digest: str
    accepted_by: str = ""


class ToolOverrideSet(Payload, frozen=True, kw_only=True):
    """An operator's word on a tool where its MCP annotations are missing or wrong."""

    server: str
    tool: str
    read_only: bool | None = None
    destructive: bool | None = None
    idempotent: bool | None = None
    open_world: bool | None = None
    idempotency_arg: str | None = None


class BreakerTransitioned(Payload, frozen=True, kw_only=True):
    """A tool server's circuit breaker changed state (closed, open, half_open)."""

    server: str
    from_state: Literal["closed", "open", "half_open"]
    to_state: Literal["closed", "open", "half_open"]
    reason: str
    consecutive_failures: int


class SecretSet(Payload, frozen=True, kw_only=True):
    """An operator set (or replaced) a secret in the executor's store. The name only: neither the
    value nor any digest of it (a digest of a guessable secret gives it away)."""

    name: str
    set_by: str = ""


class SecretDeleted(Payload, frozen=True, kw_only=True):
    """An operator deleted a secret from the executor's store."""

    name: str
    deleted_by: str = ""


class ResourceSubscription(Payload, frozen=True, kw_only=True):
    """An agent's subscription to a server's resource, as its intent (``subscribe_resource`` or
    ``unsubscribe_resource``) succeeded: the executor folds these into who holds which URI."""

    server: str
    uri: str
    agent_id: str
    intent_id: str  # the intent that did it: a second event for one intent is the same fact


class ResourceSubscribed(ResourceSubscription, frozen=True, kw_only=True):
    """The agent holds a subscription to ``uri`` on ``server`` (its subscribe_resource intent succeeded)."""


class ResourceUnsubscribed(ResourceSubscription, frozen=True, kw_only=True):
    """The agent no longer holds ``uri`` on ``server`` (its unsubscribe_resource intent succeeded)."""


class PolicyBundlePublished(Payload, frozen=True, kw_only=True):
    policy_digest: str
    cedar: str
    policy_ids: dict[str, str]  # Cedar's internal id -> the policy's @id annotation


class PolicyShadowPublished(Payload, frozen=True, kw_only=True):
    """A candidate bundle policy evaluates beside the enforced one on every live decision and
    records (``policy.shadow_decided``); it never decides anything."""

    policy_digest: str
    cedar: str
    policy_ids: dict[str, str]  # Cedar's internal id -> the policy's @id annotation
    loaded_by: str = ""


class PolicyShadowStopped(Payload, frozen=True, kw_only=True):
    """The shadow bundle ``policy_digest`` is no longer evaluated."""

    policy_digest: str
    stopped_by: str = ""


class RolloutTrigger(msgspec.Struct, frozen=True, kw_only=True):
    """A rollback trigger as declared before the rollout began: ``signal > threshold`` over the
    last ``window_s`` seconds of the slice's decisions, held for ``hold_s`` seconds."""

    text: str  # as the operator wrote it, e.g. "denial_rate>0.2 over 5m for 30s"
    signal: Literal["denial_rate", "approval_backlog", "p99_decision_ms"]
    threshold: float
    window_s: float = 0.0  # 0: a value right now (approval_backlog)
    hold_s: float = 0.0


class SignalReading(msgspec.Struct, frozen=True, kw_only=True):
    """One trigger's signal as the controller read it: ``value`` is None below ``min_decisions``."""

    trigger: str
    signal: str
    value: float | None
    threshold: float
    samples: int  # decisions of the slice in the window (open requests, for approval_backlog)
    # No one agent carries a signal: ``value`` is the lowest with any one agent's intents left out.
    # What it reads with every agent's, and the agent whose leaving out gave ``value`` (where it
    # differs): the one that moved the signal alone.
    every_agent: float | None = None
    left_out: str = ""
    # Nor does one agent hide a signal: what it reads with ``hidden_by``'s intents left out (the
    # agent whose leaving out raises it most above the threshold), and still with no other one agent
    # carrying it. Promotion waits while that is above the threshold; None where no such agent is.
    hidden: float | None = None
    hidden_by: str = ""


class PolicyRolloutStarted(Payload, frozen=True, kw_only=True):
    """A candidate bundle enforced for a slice of agents (a hash bucket below ``percent``, or the
    named ``agents``) while the rest keep ``previous_digest``; policy's controller promotes it after
    ``promote_after_s`` or rolls it back when a trigger holds."""

    rollout_id: str
    candidate_digest: str
    cedar: str
    policy_ids: dict[str, str]
    previous_digest: str | None = None
    percent: float | None = None  # the slice: agents whose bucket (0-100) is below this
    agents: list[str] = []  # or exactly these agents
    triggers: list[RolloutTrigger]
    promote_after_s: float
    cooldown_s: float = 0.0  # no step before started + cooldown
    min_decisions: int = 5  # a rate or a percentile over fewer decisions is no signal
    started_by: str = ""


class PolicyRolloutPromoted(Payload, frozen=True, kw_only=True):
    """The candidate of ``rollout_id`` became the bundle for every agent (a ``policy.published``
    of it follows); ``signals`` are the readings that let it through."""

    rollout_id: str
    candidate_digest: str
    previous_digest: str | None = None
    signals: list[SignalReading] = []
    reason: str = ""


class PolicyRolloutRolledBack(Payload, frozen=True, kw_only=True):
    """The candidate of ``rollout_id`` is no longer enforced anywhere; every agent is back on
    ``previous_digest``. ``trigger`` is the one that held (empty for an operator's abort), ``signals``
    what the controller read."""

    rollout_id: str
    candidate_digest: str
    previous_digest: str | None = None
    trigger: str = ""
    signals: list[SignalReading] = []
    reason: str = ""
    by: Literal["controller", "operator"] = "controller"


class LimitSignals(msgspec.Struct, frozen=True, kw_only=True):
    """One tool server's calls over a window, as the executor measured them."""

    calls: int
    busy: int  # calls that found every slot taken
    throughput: float  # calls per second, from the first call's end to the last's
    p50_ms: float | None = None
    p95_ms: float | None = None  # what a verdict judges by


class ConcurrencyAdjusted(Payload, frozen=True, kw_only=True):
    """The executor raised a tool server's concurrency limit by one step; ``baseline`` is what it
    measured before, a ``executor.limit_verified`` or ``executor.limit_reverted`` follows."""

    server: str
    old_limit: int
    new_limit: int
    baseline: LimitSignals
    reason: str = ""


class LimitVerdict(Payload, frozen=True, kw_only=True):
    """What a limit change came to: the signals before it (``baseline``) and since (``after``)."""

    server: str
    baseline: LimitSignals
    after: LimitSignals
    reason: str = ""


class ConcurrencyVerified(LimitVerdict, frozen=True, kw_only=True):
    """The adjusted limit is kept: measured since the change, it did not make things worse."""

    limit: int


class ConcurrencyReverted(LimitVerdict, frozen=True, kw_only=True):
    """The adjusted limit made things worse than the baseline; the previous one is back."""

    from_limit: int
    to_limit: int


class AdmissionSignals(msgspec.Struct, frozen=True, kw_only=True):
    """One route's (``server/tool``) calls over a window, as the executor's admission measured them."""

    calls: int  # calls that reached the tool and were answered (or failed) in the window
    overloaded: int  # calls answered ``overloaded`` (refused) in the window
    throughput: float  # calls per second, from the first call's end to the last's
    p50_ms: float | None = None
    p99_ms: float | None = None  # what a verdict judges by
    target_ms: float | None = None  # the latency bound the limiter held calls to (None: no call yet)
    peak_in_flight: int = 0  # the most calls the route had in flight at once


class AdmissionAdjusted(Payload, frozen=True, kw_only=True):
    """A route's admission limit moved and is recorded: ``signals`` is what moved it (the window
    before, the baseline its verdict is judged against); an ``executor.admission_verified`` or
    ``executor.admission_reverted`` follows."""

    server: str
    tool: str
    old_limit: int
    new_limit: int
    signals: AdmissionSignals
    reason: str = ""


class AdmissionVerdict(Payload, frozen=True, kw_only=True):
    """What a route's limit change came to: the signals before it (``baseline``) and since (``after``)."""

    server: str
    tool: str
    baseline: AdmissionSignals
    after: AdmissionSignals
    reason: str = ""


class AdmissionVerified(AdmissionVerdict, frozen=True, kw_only=True):
    """The route's adjusted limit is kept: measured since the change, it did not make things worse."""

    limit: int


class AdmissionReverted(AdmissionVerdict, frozen=True, kw_only=True):
    """The route's adjusted limit made things worse than the baseline; the previous one is back."""

    from_limit: int
    to_limit: int


DecisionKind = Literal["allow", "approval", "deny"]


class PolicyShadowDecided(Payload, frozen=True, kw_only=True):
    """What the shadow bundle would have decided on this intent, beside what the enforced bundle
    decided (both Cedar's decision, before rate limits). Advisory only: no stage acts on it, the
    fold and the receipts ignore it."""

    shadow_digest: str
    shadow_kind: DecisionKind
    shadow_policy_ids: list[str]
    shadow_code: str = ""  # a denial's code (forbidden, no_permit, policy_error)
    enforced_digest: str | None = None
    enforced_kind: DecisionKind
    enforced_policy_ids: list[str] = []
    enforced_code: str = ""
    agrees: bool


class Receipt(Payload, frozen=True, kw_only=True):
    """The ledger's signed statement of how one intent ended; hash-chained to the previous one."""

    position: int
    intent_id: str
    agent_id: str
    status: Literal["succeeded", "failed", "rejected", "denied", "expired", "cancelled", "outcome_unknown"]
    stage: Stage
    code: str
    reason: str
    tool: str | None = None
    server: str | None = None
    tool_digest: str | None = None
    args_digest: str | None = None
    policy_digest: str | None = None
    policy_ids: list[str] = []
    approval_digest: str | None = None
    approvers: list[str] = []  # who granted (or denied) the approval, in order
    result: dict[str, Any] | None = None
    result_digest: str | None = None
    event_ids: list[str]
    caused_by: str | None = None  # the event that led the agent to this intent (its causation_id)
    submitted_at: str | None = None
    recorded_at: str
    ledger_key_id: str
    prev_hash: str
    operation: str = "call_tool"  # the intent's operation (read_resource, get_prompt, ...)
    via: str | None = None  # who signed the intent for the caller (IntentSubmitted.via)
    receipt_hash: str = ""
    signature: str = ""

    def hashed_fields(self) -> dict[str, Any]:
        """The body the hash covers: everything but the hash and the signature; ``operation`` only
        when it is not ``call_tool`` and ``via`` only when set (so a tool call's receipt hashes the
        fields it always did)."""
        fields = msgspec.to_builtins(self)
        fields.pop("receipt_hash", None)
        fields.pop("signature", None)
        if fields.get("operation") == "call_tool":
            fields.pop("operation")
        if fields.get("via") is None:
            fields.pop("via", None)
        return dict(fields)


# (type, version) -> payload Struct. The single source for decoding and for schemas/.
CATALOG: dict[tuple[str, int], type[Payload]] = {
    ("intent.submitted", 1): IntentSubmitted,
    ("intent.authenticated", 1): IntentAuthenticated,
    ("intent.rejected", 1): IntentRejected,
    ("intent.planned", 1): IntentPlanned,
    ("intent.authorized", 1): IntentAuthorized,
    ("intent.denied", 1): IntentDenied,
    ("intent.expired", 1): IntentExpired,
    ("approval.requested", 1): ApprovalRequested,
    ("approval.granted", 1): ApprovalGranted,
    ("approval.denied", 1): ApprovalDenied,
    ("approval.refused", 1): ApprovalRefused,
    ("approval.expired", 1): ApprovalExpired,
    ("intent.cancel_requested", 1): IntentCancelRequested,
    ("intent.cancelled", 1): IntentCancelled,
    ("execution.started", 1): ExecutionStarted,
    ("execution.succeeded", 1): ExecutionSucceeded,
    ("execution.failed", 1): ExecutionFailed,
    ("execution.outcome_unknown", 1): ExecutionOutcomeUnknown,
    ("execution.attempt_failed", 1): ExecutionAttemptFailed,
    ("execution.reconciled", 1): ExecutionReconciled,
    ("execution.input_requested", 1): ExecutionInputRequested,
    ("execution.input_answered", 1): ExecutionInputAnswered,
    ("agent.registered", 1): AgentRegistered,
    ("agent.key_rotated", 1): AgentKeyRotated,
    ("agent.revoked", 1): AgentRevoked,
    ("agent.suspended", 1): AgentSuspended,
    ("agent.reinstated", 1): AgentReinstated,
    ("approver.registered", 1): ApproverRegistered,
    ("reader_token.issued", 1): ReaderTokenIssued,
    ("reader_token.revoked", 1): ReaderTokenRevoked,
    ("server.registered", 1): ServerRegistered,
    ("server.removed", 1): ServerRemoved,
    ("tools.discovered", 1): ToolsDiscovered,
    ("tool.override_set", 1): ToolOverrideSet,
    ("tool.accepted", 1): ToolAccepted,
    ("breaker.transitioned", 1): BreakerTransitioned,
    ("secret.set", 1): SecretSet,
    ("secret.deleted", 1): SecretDeleted,
    ("resource.subscribed", 1): ResourceSubscribed,
    ("resource.unsubscribed", 1): ResourceUnsubscribed,
    ("policy.published", 1): PolicyBundlePublished,
    ("policy.shadow_published", 1): PolicyShadowPublished,
    ("policy.shadow_stopped", 1): PolicyShadowStopped,
    ("policy.shadow_decided", 1): PolicyShadowDecided,
    ("executor.limit_adjusted", 1): ConcurrencyAdjusted,
    ("executor.limit_verified", 1): ConcurrencyVerified,
    ("executor.limit_reverted", 1): ConcurrencyReverted,
    ("executor.admission_adjusted", 1): AdmissionAdjusted,
    ("executor.admission_verified", 1): AdmissionVerified,
    ("executor.admission_reverted", 1): AdmissionReverted,
    ("policy.rollout_started", 1): PolicyRolloutStarted,
    ("policy.rollout_promoted", 1): PolicyRolloutPromoted,
    ("policy.rollout_rolled_back", 1): PolicyRolloutRolledBack,
    ("receipt.recorded", 1): Receipt,
}

EVENT_TYPE: dict[type[Payload], str] = {cls: name for (name, _v), cls in CATALOG.items()}
CURRENT_VERSION: dict[str, int] = {}
for _name, _version in CATALOG:
    CURRENT_VERSION[_name] = max(_version, CURRENT_VERSION.get(_name, 0))

# How an intent ends: terminal event type -> the status receipts, views and people see.
TERMINAL_STATUS: dict[str, str] = {
    "intent.rejected": "rejected",
    "intent.denied": "denied",
    "intent.expired": "expired",
    "intent.cancelled": "cancelled",
    "execution.succeeded": "succeeded",
    "execution.failed": "failed",
    "execution.outcome_unknown": "outcome_unknown",
}
TERMINAL_TYPES = frozenset(TERMINAL_STATUS)
# How far an open intent has come: the event that reaches each stage -> the status receipts'
# readers, views, the SDK and the gateway's progress show, in the order the stages run.
STAGE_STATUS: dict[str, str] = {
    "intent.submitted": "submitted",
    "intent.authenticated": "authenticated",
    "intent.planned": "planned",
    "approval.requested": "awaiting_approval",
    "intent.authorized": "authorized",
    "execution.started": "executing",
}
# Intent events that record something beside the intent's course and change nothing in it: the
# fold (and so every stage and every receipt) leaves them out.
ADVISORY_TYPES = frozenset({"policy.shadow_decided", "execution.input_requested", "execution.input_answered"})
