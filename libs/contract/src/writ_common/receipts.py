"""Receipts: built from an intent's folded history, hash-chained and Ed25519-signed; verifiable
by anyone holding the ledger's public key."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from nacl.signing import SigningKey

from writ_common import events as ev
from writ_common.digest import canonical_json
from writ_common.fold import IntentView
from writ_common.signing import SignatureInvalid, sign, verify

GENESIS = "sha256:" + "0" * 64


def receipt_hash(receipt: ev.Receipt) -> str:
    """sha256 over the canonical JSON of the receipt body (all but hash and signature)."""
    return "sha256:" + hashlib.sha256(canonical_json(receipt.hashed_fields())).hexdigest()


def ending(terminal: ev.Payload) -> tuple[ev.Stage, str, str]:
    """How an intent ended, as its receipt and the views say it: the stage it ended in, the code
    and the reason, from its terminal event (``ok`` when the tool ran and returned)."""
    match terminal:
        case ev.IntentRejected():
            return terminal.stage, terminal.code, terminal.reason
        case ev.IntentDenied():
            return "authorize", terminal.code, terminal.reason
        case ev.IntentExpired():
            return terminal.stage, "deadline_exceeded", terminal.reason
        case ev.IntentCancelled():
            return terminal.stage, "cancelled", terminal.reason
        case ev.ExecutionFailed():
            return "execute", terminal.code, terminal.reason
        case ev.ExecutionOutcomeUnknown():
            return "execute", "outcome_unknown", terminal.reason
        case _:
            return "execute", "ok", "the tool ran and returned its result"


def intent_fields(view: IntentView) -> dict[str, Any]:
    """What a receipt says of its intent, all of it derived from the intent's admitted history:
    the ledger builds receipts from it, and ``verify`` rebuilds it to check them."""
    terminal = view.terminal
    assert terminal is not None and view.intent_id and view.agent_id
    payload = terminal.payload
    status = ev.TERMINAL_STATUS[terminal.type]
    stage, code, reason = ending(payload)
    result: dict[str, object] | None = None
    result_digest: str | None = None
    match payload:
        case ev.ExecutionSucceeded():
            result, result_digest = payload.result, payload.result_digest
        case ev.ExecutionFailed():
            result = payload.result
        case _:
            pass
    planned, authorized = view.planned, view.authorized
    denied = payload if isinstance(payload, ev.IntentDenied) else None
    policy_source = authorized or view.approval or denied
    return {
        "intent_id": view.intent_id,
        "agent_id": view.agent_id,
        "status": status,
        "stage": stage,
        "code": code,
        "reason": reason,
        "tool": view.submitted.tool if view.submitted else None,
        "operation": view.submitted.operation if view.submitted else "call_tool",
        "via": view.submitted.via if view.submitted else None,
        "server": planned.server if planned else None,
        "tool_digest": planned.tool_digest if planned else None,
        "args_digest": planned.args_digest if planned else None,
        "policy_digest": policy_source.policy_digest if policy_source else None,
        "policy_ids": list(policy_source.policy_ids) if policy_source else [],
        "approval_digest": view.approval.approval_digest if view.approval else None,
        "approvers": [g.approver_id for g in view.grants]
        + ([view.approval_denial.approver_id] if view.approval_denial else []),
        "result": result,
        "result_digest": result_digest,
        "event_ids": [e.envelope.id for e in view.events if e.seq <= terminal.seq],
        "caused_by": view.submitted_event.envelope.causation_id if view.submitted_event else None,
        "submitted_at": view.submitted_event.envelope.occurred_at if view.submitted_event else None,
    }


def build_receipt(
    view: IntentView, *, position: int, prev_hash: str, recorded_at: str, key: SigningKey, ledger_key_id: str
) -> ev.Receipt:
    """The signed receipt for a terminal intent."""
    unsigned = msgspec.convert(
        {
            **intent_fields(view),
            "position": position,
            "recorded_at": recorded_at,
            "ledger_key_id": ledger_key_id,
            "prev_hash": prev_hash,
        },
        ev.Receipt,
    )
    digest = receipt_hash(unsigned)
    return msgspec.structs.replace(unsigned, receipt_hash=digest, signature=sign(key, digest.encode()))


def history_findings(receipts: Sequence[ev.Receipt], views: Mapping[str, IntentView]) -> list[Finding]:
    """Each receipt against its intent's admitted history: a receipt that says something the
    history does not (another tool, status, digest, approvers, events) is named, field by field.

    Args:
        receipts: receipts to check.
        views: intent id -> the fold of that intent's admitted history.
    """
    findings: list[Finding] = []
    for receipt in receipts:
        view = views.get(receipt.intent_id)
        if view is None or view.terminal is None or view.submitted is None:
            findings.append(
                Finding(
                    "history_mismatch",
                    receipt.position,
                    receipt.intent_id,
                    f"history_mismatch at position {receipt.position}: the log holds no ended intent"
                    f" {receipt.intent_id} for this receipt to vouch for",
                )
            )
            continue
        said = msgspec.to_builtins(receipt)
        differing = [name for name, value in msgspec.to_builtins(intent_fields(view)).items() if said[name] != value]
        if differing:
            findings.append(
                Finding(
                    "history_mismatch",
                    receipt.position,
                    receipt.intent_id,
                    f"history_mismatch at position {receipt.position}: receipt for {receipt.intent_id} disagrees"
                    f" with the intent's history on {', '.join(differing)}",
                )
            )
    return findings


class ReceiptInvalid(Exception):
    """A receipt does not verify; the message says which check failed."""


def verify_receipt(receipt: ev.Receipt, public_key: str, *, prev_hash: str | None = None) -> None:
    """Check the receipt's hash, its signature, and (when given) its link to the previous receipt.

    Raises:
        ReceiptInvalid: naming the first check that failed.
    """
    digest = receipt_hash(receipt)
    if digest != receipt.receipt_hash:
        raise ReceiptInvalid(f"hash mismatch: the receipt body hashes to {digest}, not {receipt.receipt_hash}")
    try:
        verify(public_key, receipt.receipt_hash.encode(), receipt.signature)
    except SignatureInvalid as exc:
        raise ReceiptInvalid("bad signature: not signed by the ledger's key") from exc
    if prev_hash is not None and receipt.prev_hash != prev_hash:
        raise ReceiptInvalid(
            f"broken chain at position {receipt.position}: prev_hash {receipt.prev_hash}"
            f" != previous receipt {prev_hash}"
        )


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong with the ledger, at an exact place."""

    code: str  # hash_mismatch | bad_signature | broken_link | position_gap | duplicate_receipt |
    # terminal_without_receipt | receipt_without_terminal | history_mismatch | foreign_message |
    # stranded_intent
    position: int | None
    intent_id: str | None
    message: str


def verify_chain(
    receipts: Sequence[ev.Receipt],
    public_key: str,
    *,
    terminal_intents: Collection[str] | None = None,
    first_prev_hash: str | None = None,
) -> list[Finding]:
    """Walk receipts in ledger order and name every break.

    Args:
        receipts: the chain or a contiguous range of it, in ledger order.
        public_key: the ledger's base64 Ed25519 public key.
        terminal_intents: intents the log says have ended; when given, each must have a receipt
            and each receipt must be for one of them.
        first_prev_hash: what the first receipt must link to (``GENESIS`` for a whole chain;
            None for a range whose predecessor is not at hand).
    """
    findings: list[Finding] = []
    seen: dict[str, int] = {}
    previous: ev.Receipt | None = None
    for receipt in receipts:
        where = receipt.position

        def add(code: str, message: str, r: ev.Receipt = receipt, at: int = where) -> None:
            findings.append(Finding(code, at, r.intent_id, f"{code} at position {at}: {message}"))

        if receipt_hash(receipt) != receipt.receipt_hash:
            add("hash_mismatch", f"receipt for {receipt.intent_id} does not hash to its receipt_hash (altered)")
        else:
            try:
                verify(public_key, receipt.receipt_hash.encode(), receipt.signature)
            except SignatureInvalid:
                add("bad_signature", f"receipt for {receipt.intent_id} is not signed by the ledger's key")
        expected_prev = previous.receipt_hash if previous is not None else first_prev_hash
        if expected_prev is not None and receipt.prev_hash != expected_prev:
            add("broken_link", "prev_hash does not match the receipt before it (deleted, reordered or inserted)")
        if previous is not None and receipt.position != previous.position + 1:
            add("position_gap", f"follows position {previous.position}")
        if receipt.intent_id in seen:
            add("duplicate_receipt", f"{receipt.intent_id} already has a receipt at position {seen[receipt.intent_id]}")
        else:
            seen[receipt.intent_id] = where
        previous = receipt
    if terminal_intents is not None:
        ended = set(terminal_intents)
        for intent_id in sorted(ended - seen.keys()):
            findings.append(
                Finding(
                    "terminal_without_receipt",
                    None,
                    intent_id,
                    f"terminal_without_receipt: {intent_id} ended but has no receipt",
                )
            )
        for intent_id, position in seen.items():
            if intent_id not in ended:
                findings.append(
                    Finding(
                        "receipt_without_terminal",
                        position,
                        intent_id,
                        f"receipt_without_terminal at position {position}: the log has no terminal event for {intent_id}",
                    )
                )
    return findings
