"""Who says what, where: the one table of Writ's events, the subject each travels on and who may
publish it.

The bus permissions (:mod:`writ_common.busauth`), the schemas and AsyncAPI document
(:mod:`writ_common.schemagen`) and every reader's check (:func:`admit`) derive from this table. The
nats-server refuses a publish outside a user's allow list, so the subject says who wrote an event;
a reader believes an event only where its subject, its envelope type and its producer agree with
this table. Whatever an agent writes inside a ``submitted`` message is only ever a submission.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from writ_common import subjects
from writ_common.envelope import StoredEvent, UndecodableEvent

AGENT = "agent"  # an agent, through the SDK, raw NATS or the gateway: any producer name
SERVICES = ("identity", "registry", "policy", "executor", "ledger")


@dataclass(frozen=True, slots=True)
class Route:
    """One event type: the stream it lives in, its subject (with ``{placeholders}``) and the
    parties whose bus users may publish it."""

    type: str
    stream: str
    subject: str
    publishers: tuple[str, ...]

    @property
    def token(self) -> str:
        """The subject token that names the event (intent events only)."""
        return subjects.event_token(self.type)


def _intent(event_type: str, *publishers: str) -> Route:
    return Route(
        event_type,
        subjects.INTENTS_STREAM,
        subjects.intent_subject("{agent_id}", "{intent_id}", event_type),
        publishers,
    )


def _control(event_type: str, stream: str, subject: str, publisher: str) -> Route:
    return Route(event_type, stream, subject, (publisher,))


# Any stage past its own may find the deadline gone and end the intent as expired, or find its
# agent's cancel request and end it as cancelled.
_EXPIRERS = ("identity", "registry", "policy", "executor")

ROUTES: tuple[Route, ...] = (
    # The intent's history: WRIT_INTENTS, writ.intent.<agent_id>.<intent_id>.<token>
    _intent("intent.submitted", AGENT),
    _intent("intent.authenticated", "identity"),
    _intent("intent.rejected", "identity", "registry"),
    _intent("intent.planned", "registry"),
    _intent("intent.authorized", "policy"),
    _intent("intent.denied", "policy"),
    _intent("intent.expired", *_EXPIRERS),
    # The agent asks to stop its own intent; the stage that next acts on it (or the executor
    # running its call) ends it.
    _intent("intent.cancel_requested", AGENT),
    _intent("intent.cancelled", *_EXPIRERS),
    _intent("approval.requested", "policy"),
    _intent("approval.granted", "policy"),
    _intent("approval.denied", "policy"),
    _intent("approval.refused", "policy"),
    _intent("approval.expired", "policy"),
    _intent("execution.started", "executor"),
    _intent("execution.succeeded", "executor"),
    _intent("execution.failed", "executor"),
    _intent("execution.outcome_unknown", "executor"),
    _intent("execution.attempt_failed", "executor"),
    _intent("execution.reconciled", "executor"),
    # A server asked the calling client for input (sampling, elicitation) during a call, and how it
    # was answered: advisory, the fold leaves them out.
    _intent("execution.input_requested", "executor"),
    _intent("execution.input_answered", "executor"),
    _intent("policy.shadow_decided", "policy"),
    # Control state: one stream per owning service.
    _control("agent.registered", subjects.IDENTITY_STREAM, subjects.agent_subject("{agent_id}"), "identity"),
    _control(
        "agent.key_rotated",
        subjects.IDENTITY_STREAM,
        subjects.agent_event_subject("{agent_id}", "key_rotated"),
        "identity",
    ),
    _control(
        "agent.revoked", subjects.IDENTITY_STREAM, subjects.agent_event_subject("{agent_id}", "revoked"), "identity"
    ),
    *(
        _control(
            f"agent.{step}", subjects.IDENTITY_STREAM, subjects.agent_event_subject("{agent_id}", step), "identity"
        )
        for step in ("suspended", "reinstated")
    ),
    _control("approver.registered", subjects.IDENTITY_STREAM, subjects.approver_subject("{approver_id}"), "identity"),
    _control(
        "reader_token.issued",
        subjects.IDENTITY_STREAM,
        subjects.reader_token_subject("{name}", "issued"),
        "identity",
    ),
    _control(
        "reader_token.revoked",
        subjects.IDENTITY_STREAM,
        subjects.reader_token_subject("{name}", "revoked"),
        "identity",
    ),
    _control("server.registered", subjects.REGISTRY_STREAM, subjects.server_subject("{server}"), "registry"),
    _control("server.removed", subjects.REGISTRY_STREAM, subjects.server_removed_subject("{server}"), "registry"),
    _control("tools.discovered", subjects.REGISTRY_STREAM, subjects.tools_subject("{server}"), "registry"),
    _control("tool.override_set", subjects.REGISTRY_STREAM, subjects.override_subject("{server}"), "registry"),
    _control("tool.accepted", subjects.REGISTRY_STREAM, subjects.accepted_subject("{server}"), "registry"),
    _control("breaker.transitioned", subjects.EXECUTOR_STREAM, subjects.breaker_subject("{server}"), "executor"),
    *(
        _control(
            f"executor.limit_{step}", subjects.EXECUTOR_STREAM, subjects.limit_subject("{server}", step), "executor"
        )
        for step in ("adjusted", "verified", "reverted")
    ),
    *(
        _control(
            f"executor.admission_{step}",
            subjects.EXECUTOR_STREAM,
            subjects.admission_subject("{server}", step),
            "executor",
        )
        for step in ("adjusted", "verified", "reverted")
    ),
    _control("secret.set", subjects.EXECUTOR_STREAM, subjects.secret_subject("{name}", "set"), "executor"),
    _control("secret.deleted", subjects.EXECUTOR_STREAM, subjects.secret_subject("{name}", "deleted"), "executor"),
    *(
        _control(
            f"resource.{step}", subjects.EXECUTOR_STREAM, subjects.subscription_subject("{server}", step), "executor"
        )
        for step in ("subscribed", "unsubscribed")
    ),
    _control("policy.published", subjects.POLICY_STREAM, subjects.POLICY_SUBJECT, "policy"),
    _control("policy.shadow_published", subjects.POLICY_STREAM, subjects.SHADOW_PUBLISHED_SUBJECT, "policy"),
    _control("policy.shadow_stopped", subjects.POLICY_STREAM, subjects.SHADOW_STOPPED_SUBJECT, "policy"),
    _control("policy.rollout_started", subjects.POLICY_STREAM, subjects.ROLLOUT_STARTED_SUBJECT, "policy"),
    _control("policy.rollout_promoted", subjects.POLICY_STREAM, subjects.ROLLOUT_PROMOTED_SUBJECT, "policy"),
    _control("policy.rollout_rolled_back", subjects.POLICY_STREAM, subjects.ROLLOUT_ROLLED_BACK_SUBJECT, "policy"),
    _control(
        "receipt.recorded", subjects.LEDGER_STREAM, subjects.receipt_subject("{agent_id}", "{intent_id}"), "ledger"
    ),
)

ROUTE: Mapping[str, Route] = {r.type: r for r in ROUTES}
INTENT_ROUTES: tuple[Route, ...] = tuple(r for r in ROUTES if r.stream == subjects.INTENTS_STREAM)
# The intent subject's last token -> the one event type it may carry.
TYPE_OF_TOKEN: Mapping[str, str] = {r.token: r.type for r in INTENT_ROUTES}

# Each service's control stream: the subjects it alone appends to.
CONTROL_PREFIX_BY_SERVICE: Mapping[str, str] = {
    "identity": "writ.identity.>",
    "registry": "writ.registry.>",
    "policy": "writ.policy.>",
    "executor": "writ.executor.>",
    "ledger": "writ.ledger.>",
}
_OWNER_OF_CONTEXT = {prefix.split(".")[1]: service for service, prefix in CONTROL_PREFIX_BY_SERVICE.items()}


def intent_tokens_of(party: str) -> tuple[str, ...]:
    """The intent subject tokens ``party`` may publish (its bus permissions)."""
    return tuple(r.token for r in INTENT_ROUTES if party in r.publishers)


def types_sent_by(party: str) -> tuple[str, ...]:
    """Every event type ``party`` may publish."""
    return tuple(r.type for r in ROUTES if party in r.publishers)


def admit(event: StoredEvent) -> None:
    """Believe ``event`` only where its subject, type and producer agree with the table.

    An intent event's type is the one its subject token names, its envelope names the agent and
    intent of its subject, and its producer is one of the parties allowed to publish it. A control
    event sits in its owner's subtree and is produced by that owner.

    Raises:
        UndecodableEvent: ``forged_event`` (or ``subject_mismatch``), with a reason naming what
            disagrees; the event must be skipped (and dead-lettered by its consumer).
    """
    parts = event.subject.split(".")
    env = event.envelope
    if event.subject.startswith(subjects.INTENT_PREFIX + "."):
        if len(parts) != 5:
            raise UndecodableEvent("subject_mismatch", f"{event.subject} is not an intent event subject")
        _, _, agent_id, intent_id, token = parts
        expected = TYPE_OF_TOKEN.get(token)
        if expected is None:
            raise UndecodableEvent("forged_event", f"{event.subject}: no event travels on token {token!r}")
        if env.type != expected:
            raise UndecodableEvent(
                "forged_event", f"{event.subject} carries only {expected}, but its envelope says {env.type}"
            )
        if env.agent_id != agent_id or env.intent_id != intent_id:
            raise UndecodableEvent(
                "subject_mismatch",
                f"event published on {event.subject} but its envelope names agent {env.agent_id!r}"
                f" and intent {env.intent_id!r}",
            )
        publishers = ROUTE[expected].publishers
        if AGENT not in publishers and env.producer.service not in publishers:
            raise UndecodableEvent(
                "forged_event",
                f"{env.type} is published by {' or '.join(publishers)}, not {env.producer.service!r}",
            )
        if AGENT in publishers and env.producer.service in SERVICES:
            raise UndecodableEvent(
                "forged_event", f"{env.type} comes from an agent, not from service {env.producer.service!r}"
            )
        return
    owner = _OWNER_OF_CONTEXT.get(parts[1]) if len(parts) > 1 and parts[0] == "writ" else None
    if owner is None:
        return  # not an event subject of Writ's (e.g. a test's own)
    route = ROUTE.get(env.type)
    if route is None or route.publishers != (owner,) or env.producer.service != owner:
        raise UndecodableEvent(
            "forged_event",
            f"{event.subject} belongs to {owner}; it does not carry {env.type} from {env.producer.service!r}",
        )
