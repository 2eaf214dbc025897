"""Streams and subjects: the one place that names them."""

from __future__ import annotations

INTENTS_STREAM = "WRIT_INTENTS"
IDENTITY_STREAM = "WRIT_IDENTITY"
REGISTRY_STREAM = "WRIT_REGISTRY"
POLICY_STREAM = "WRIT_POLICY"
EXECUTOR_STREAM = "WRIT_EXECUTOR"
LEDGER_STREAM = "WRIT_LEDGER"
DLQ_STREAM = "WRIT_DLQ"

INTENT_PREFIX = "writ.intent"


def event_token(event_type: str) -> str:
    """Last subject token for an event type: ``intent.planned`` -> ``planned``,
    ``execution.started`` -> ``execution_started``."""
    if event_type.startswith("intent."):
        return event_type.removeprefix("intent.")
    return event_type.replace(".", "_")


def intent_subject(agent_id: str, intent_id: str, event_type: str) -> str:
    return f"{INTENT_PREFIX}.{agent_id}.{intent_id}.{event_token(event_type)}"


def intent_filter(agent_id: str, intent_id: str) -> str:
    """Every event of one intent: the fence subject for expected-sequence checks."""
    return f"{INTENT_PREFIX}.{agent_id}.{intent_id}.>"


def intents_of_type(event_type: str) -> str:
    """Every intent's events of one type (a service's consumer filter)."""
    return f"{INTENT_PREFIX}.*.*.{event_token(event_type)}"


def agent_subject(agent_id: str) -> str:
    return f"writ.identity.agent.{agent_id}.registered"


def agent_event_subject(agent_id: str, event: str) -> str:
    """``key_rotated``, ``revoked``, ``suspended`` or ``reinstated`` events of one agent."""
    return f"writ.identity.agent.{agent_id}.{event}"


def approver_subject(approver_id: str) -> str:
    return f"writ.identity.approver.{approver_id}.registered"


def reader_token_subject(name: str, event: str) -> str:
    """``issued`` or ``revoked`` events of one views API token."""
    return f"writ.identity.reader.{name}.{event}"


def server_subject(server: str) -> str:
    return f"writ.registry.server.{server}.registered"


def server_removed_subject(server: str) -> str:
    return f"writ.registry.server.{server}.removed"


def tools_subject(server: str) -> str:
    return f"writ.registry.server.{server}.tools"


def accepted_subject(server: str) -> str:
    return f"writ.registry.server.{server}.accepted"


def override_subject(server: str) -> str:
    return f"writ.registry.server.{server}.override"


POLICY_SUBJECT = "writ.policy.bundle.published"
SHADOW_PUBLISHED_SUBJECT = "writ.policy.shadow.published"
SHADOW_STOPPED_SUBJECT = "writ.policy.shadow.stopped"
ROLLOUT_STARTED_SUBJECT = "writ.policy.rollout.started"
ROLLOUT_PROMOTED_SUBJECT = "writ.policy.rollout.promoted"
ROLLOUT_ROLLED_BACK_SUBJECT = "writ.policy.rollout.rolled_back"


def breaker_subject(server: str) -> str:
    return f"writ.executor.breaker.{server}"


def limit_subject(server: str, event: str) -> str:
    """``adjusted``, ``verified`` or ``reverted``: a tool server's concurrency limit, step by step."""
    return f"writ.executor.limit.{server}.{event}"


def admission_subject(server: str, event: str) -> str:
    """``adjusted``, ``verified`` or ``reverted``: the admission limit of one of the server's routes."""
    return f"writ.executor.admission.{server}.{event}"


def secret_subject(name: str, event: str) -> str:
    """``set`` or ``deleted``: the audit trail of one secret (its name, never its value)."""
    return f"writ.executor.secret.{name}.{event}"


def subscription_subject(server: str, event: str) -> str:
    """``subscribed`` or ``unsubscribed``: an agent's subscription to one of the server's resources
    (its URI in the body: a URI is not a subject token) took effect upstream."""
    return f"writ.executor.subscription.{server}.{event}"


def receipt_subject(agent_id: str, intent_id: str) -> str:
    """Under the agent's id, so an agent's bus user can be let read its own receipts and no one
    else's (intent ids derive from agent and idempotency key, so they can be guessed)."""
    return f"writ.ledger.receipt.{agent_id}.{intent_id}"


def any_receipt_subject(intent_id: str) -> str:
    """The receipt of ``intent_id`` whoever's it is: for the operator and services, who may read all."""
    return f"writ.ledger.receipt.*.{intent_id}"


def agent_receipts(agent_id: str) -> str:
    return f"writ.ledger.receipt.{agent_id}.*"


RECEIPTS_FILTER = "writ.ledger.receipt.>"


def receipt_notice_subject(agent_id: str, intent_id: str) -> str:
    """Core NATS only (no stream): "the receipt is stored", under the agent's id, so an agent may
    listen for its own receipts without being able to listen to anyone else's."""
    return f"writ.notice.{agent_id}.{intent_id}.receipt"


def relay_notice_subject(agent_id: str, intent_id: str, kind: str) -> str:
    """Core NATS only: what a tool's server sent during the intent's call, ``kind`` ``progress`` or
    ``message`` (a log message), relayed by the executor to the agent that asked (its gateway)."""
    return f"writ.notice.{agent_id}.{intent_id}.{kind}"


def input_request_subject(agent_id: str, intent_id: str) -> str:
    """Core NATS only: a tool's server asks the calling client for input (sampling, elicitation)
    during the intent's call; published by the executor with the reply subject
    :func:`input_answer_subject`, where only the agent that asked may answer."""
    return relay_notice_subject(agent_id, intent_id, "input")


def input_answer_subject(agent_id: str, intent_id: str, ask: str) -> str:
    """Core NATS only: the agent's answer to request ``ask`` for input during its intent's call;
    under the agent's id, so the executor knows whose client answered."""
    return f"{ANSWER_PREFIX}.{agent_id}.{intent_id}.{ask}"


ANSWER_PREFIX = "writ.answer"
RESOURCE_UPDATED = "resources.updated"


def resource_updated_subject(agent_id: str) -> str:
    """Core NATS only: a server said a resource the agent subscribed to changed
    (``notifications/resources/updated``); body ``{"server", "uri"}``, the URI exactly as the
    agent subscribed to it. Published by the executor, under the agent's id so only it may listen."""
    return f"writ.notice.{agent_id}.{RESOURCE_UPDATED}"


LIST_CHANGED_PREFIX = "writ.list_changed"
LIST_CHANGED_FILTER = f"{LIST_CHANGED_PREFIX}.>"
LIST_CHANGED_KINDS = ("resources", "prompts")


def list_changed_subject(server: str, kind: str) -> str:
    """Core NATS only: ``kind`` (``resources`` or ``prompts``) that ``server`` lists changed; no
    body beyond the subject. Published by the executor, every agent may listen (listings are not
    governed: any agent may ask for them)."""
    return f"{LIST_CHANGED_PREFIX}.{server}.{kind}"


APPROVALS_NOTICE_TOKEN = "approvals"
# Agent ids that would make an agent's notices (writ.notice.<agent>.>) overlap others': refused.
RESERVED_AGENT_IDS = frozenset({APPROVALS_NOTICE_TOKEN})


def approval_notice_subject(group: str, intent_id: str) -> str:
    """Core NATS only: "a request waits for ``group``"; an approver's bus user hears only its groups'."""
    return f"writ.notice.{APPROVALS_NOTICE_TOKEN}.{group}.{intent_id}"


def dlq_subject(service: str) -> str:
    return f"writ.dlq.{service}"


def command_subject(service: str, command: str) -> str:
    """Request/reply subject of a control command handled by ``service``."""
    return f"writ.cmd.{service}.{command}"


APPROVER_CALLER = "approver"


def approver_command_subject(approver_id: str, command: str) -> str:
    """An approver's own command to policy: ``writ.cmd.policy.approver.<approver_id>.<command>``.
    Only that approver's bus user may publish here, so the subject tells policy who asks."""
    return f"writ.cmd.policy.{APPROVER_CALLER}.{approver_id}.{command}"


def inbox_prefix(name: str) -> str:
    """Each bus user's replies come to its own inbox subtree, so no one can read another's replies."""
    return f"_INBOX_{name}"


def approver_bus_name(approver_id: str) -> str:
    """``approvers.<id>``: every approver's inbox sits under ``_INBOX_approvers.``, where services reply."""
    return f"approvers.{approver_id}"
