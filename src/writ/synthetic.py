"""A generated log of realistic intent lifecycles, for the views' tests and ``make bench-views``.

Deterministic for a seed: the same events (ids, times, payloads) every run. Times advance from a
fixed start, so the views' hours and durations are the same on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec

from writ_common import events as ev
from writ_common import subjects, topology
from writ_common.digest import sha256_digest
from writ_common.envelope import Envelope, Producer, make_envelope
from writ_common.ids import derive_intent_id
from writ_common.receipts import GENESIS, receipt_hash
from writ_common.signing import generate_key, public_key_b64

START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
TOOLS = (("time", "get_current_time", True), ("time", "convert_time", True), ("files", "write_file", False),
         ("db", "append_row", False), ("search", "web_search", True))  # fmt: skip
POLICY_DIGEST = sha256_digest("synthetic policy")
Then = Callable[[ev.Payload, float], None]  # append an event this many ms after the previous one
RECEIPT_STATUS: dict[str, Literal["succeeded", "failed", "rejected", "denied", "outcome_unknown"]] = {
    "execution.succeeded": "succeeded",
    "execution.failed": "failed",
    "intent.rejected": "rejected",
    "intent.denied": "denied",
    "execution.outcome_unknown": "outcome_unknown",
}
ANNOTATIONS = ev.ToolAnnotations(read_only=True, destructive=False, idempotent=True, open_world=False)


@dataclass(frozen=True, slots=True)
class Message:
    """One message to publish: its stream, subject and envelope."""

    stream: str
    subject: str
    envelope: Envelope


def producer_of(payload: ev.Payload) -> Producer:
    """Who the topology says publishes this event (readers believe nothing else)."""
    party = topology.ROUTE[ev.EVENT_TYPE[type(payload)]].publishers[0]
    return Producer(service="agent-sdk" if party == topology.AGENT else party, instance="synthetic", version="0")


def _stamp(envelope: Envelope, at: datetime) -> Envelope:
    text = at.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return msgspec.structs.replace(envelope, occurred_at=text)


def control_log(agents: int = 12) -> Iterator[Message]:
    """Agents (identity) and servers with their tools (registry)."""
    for i in range(agents):
        key = generate_key()
        agent_id = f"agent-{i:02d}"
        payload = ev.AgentRegistered(agent_id=agent_id, public_key=public_key_b64(key), owner=f"team-{i % 3}")
        env = _stamp(make_envelope(payload, producer=producer_of(payload), agent_id=agent_id), START)
        yield Message(subjects.IDENTITY_STREAM, subjects.agent_subject(agent_id), env)
    for server in sorted({s for s, _, _ in TOOLS}):
        reg = ev.ServerRegistered(name=server, transport="stdio", command=f"mcp-{server}")
        yield Message(
            subjects.REGISTRY_STREAM,
            subjects.server_subject(server),
            _stamp(make_envelope(reg, producer=producer_of(reg)), START),
        )
        tools = [
            ev.ToolDefinition(
                name=name,
                input_schema={"type": "object"},
                annotations=ANNOTATIONS,
                tool_digest=sha256_digest([server, name]),
            )
            for s, name, _ in TOOLS
            if s == server
        ]
        found = ev.ToolsDiscovered(server=server, tools=tools)
        yield Message(
            subjects.REGISTRY_STREAM,
            subjects.tools_subject(server),
            _stamp(make_envelope(found, producer=producer_of(found)), START),
        )


def intent_log(intents: int, *, seed: int = 7, agents: int = 12) -> Iterator[Message]:
    """``intents`` lifecycles (about 6.5 events each), each followed by its receipt on the ledger stream."""
    rng = random.Random(seed)
    prev_hash = GENESIS
    for n in range(intents):
        agent_id = f"agent-{rng.randrange(agents):02d}"
        server, tool, read_only = TOOLS[rng.randrange(len(TOOLS))]
        intent_id = derive_intent_id(agent_id, f"k{seed}-{n}")
        at = START + timedelta(seconds=n * 0.5)
        events: list[tuple[ev.Payload, datetime]] = []

        def then(
            payload: ev.Payload, ms: float, events: list[tuple[ev.Payload, datetime]] = events, at: datetime = at
        ) -> None:
            last = events[-1][1] if events else at
            events.append((payload, last + timedelta(milliseconds=ms)))

        args = {"n": n}
        then(ev.IntentSubmitted(agent_id=agent_id, idempotency_key=f"k{seed}-{n}", tool=tool, arguments=args,
                                on_behalf_of=f"user-{n % 50}", issued_at="2026-01-05T08:00:00Z",
                                nonce=f"nonce-{n}", signature="synthetic"), 0)  # fmt: skip
        roll = rng.random()
        if roll < 0.04:
            then(
                ev.IntentRejected(
                    stage="authenticate", code="bad_signature", reason="bad_signature: not signed by the agent's key"
                ),
                rng.uniform(1, 4),
            )
        else:
            then(ev.IntentAuthenticated(key_id="k", owner="team"), rng.uniform(1, 4))
            if roll < 0.08:
                then(
                    ev.IntentRejected(
                        stage="plan", code="invalid_arguments", reason="invalid_arguments: 'n' is not a string"
                    ),
                    rng.uniform(1, 3),
                )
            else:
                then(ev.IntentPlanned(server=server, tool=tool, tool_digest=sha256_digest([server, tool]),
                                      args_digest=sha256_digest(args), annotations=ANNOTATIONS), rng.uniform(1, 3))  # fmt: skip
                _decide_and_run(rng, then, read_only=read_only, server=server, tool=tool, roll=roll)
        terminal = ""
        for payload, when in events:
            kind = ev.EVENT_TYPE[type(payload)]
            env = _stamp(
                make_envelope(payload, producer=producer_of(payload), intent_id=intent_id, agent_id=agent_id), when
            )
            yield Message(subjects.INTENTS_STREAM, subjects.intent_subject(agent_id, intent_id, kind), env)
            if kind in ev.TERMINAL_TYPES and not terminal:
                terminal = kind
        # Hashed and chained like the ledger's; not signed (the views do not verify signatures).
        receipt = ev.Receipt(position=n + 1, intent_id=intent_id, agent_id=agent_id,
                             status=RECEIPT_STATUS[terminal], stage="execute", code="ok",
                             reason="synthetic", tool=tool, server=server, event_ids=[], recorded_at="2026-01-05T08:00:00Z",
                             ledger_key_id="synthetic", prev_hash=prev_hash)  # fmt: skip
        receipt = msgspec.structs.replace(receipt, receipt_hash=receipt_hash(receipt))
        prev_hash = receipt.receipt_hash
        env = make_envelope(receipt, producer=producer_of(receipt), intent_id=intent_id, agent_id=agent_id)
        yield Message(subjects.LEDGER_STREAM, subjects.receipt_subject(agent_id, intent_id), _stamp(env, events[-1][1]))


def _decide_and_run(rng: random.Random, add: Then, *, read_only: bool, server: str, tool: str, roll: float) -> None:
    if roll < 0.16:
        add(ev.IntentDenied(policy_digest=POLICY_DIGEST, policy_ids=["no-writes"], code="forbidden",
                            reason="forbidden: denied by policy no-writes"), rng.uniform(1, 5))  # fmt: skip
        return
    if not read_only and roll < 0.30:
        add(ev.ApprovalRequested(approval_digest=sha256_digest(roll), policy_digest=POLICY_DIGEST,
                                 policy_ids=["destructive-needs-approval"], group="operators", quorum=1,
                                 expires_at="2026-01-05T09:00:00Z", tool=f"{server}/{tool}"), rng.uniform(1, 5))  # fmt: skip
        decision = {"key_id": "k", "approval_digest": "d", "signed_at": "2026-01-05T08:00:00Z", "signature": "s"}
        if roll < 0.20:
            add(ev.ApprovalDenied(approver_id="carol", **decision), rng.uniform(2000, 60000))
            add(ev.IntentDenied(policy_digest=POLICY_DIGEST, policy_ids=["destructive-needs-approval"],
                                code="approval_denied", reason="approval_denied: carol denied it"), 2)  # fmt: skip
            return
        add(ev.ApprovalGranted(approver_id="carol", **decision), rng.uniform(2000, 60000))
        add(ev.IntentAuthorized(policy_digest=POLICY_DIGEST, policy_ids=["destructive-needs-approval"]), 2)
    else:
        add(ev.IntentAuthorized(policy_digest=POLICY_DIGEST, policy_ids=["read-only-tools"]), rng.uniform(1, 5))
    attempt = 1
    add(ev.ExecutionStarted(attempt=1, idempotency_key="k", server=server, tool=tool), rng.uniform(1, 3))
    if rng.random() < 0.1:
        add(
            ev.ExecutionAttemptFailed(
                attempt=1, code="connection_lost", reason="the server went away", retry_after_ms=250
            ),
            rng.uniform(5, 50),
        )
        attempt = 2
        add(ev.ExecutionStarted(attempt=2, idempotency_key="k", server=server, tool=tool), 250)
    outcome = rng.random()
    duration = rng.lognormvariate(3.0, 0.8)
    if outcome < 0.06:
        add(
            ev.ExecutionFailed(attempt=attempt, retryable=False, code="tool_error", reason="tool_error: it said no"),
            duration,
        )
    elif outcome < 0.08:
        add(ev.ExecutionOutcomeUnknown(attempt=attempt, reason="the executor stopped mid-call"), duration)
    else:
        add(ev.ExecutionSucceeded(attempt=attempt, result={"content": [{"type": "text", "text": "ok"}]},
                                  result_digest=sha256_digest("ok"), duration_ms=round(duration, 3)), duration)  # fmt: skip
