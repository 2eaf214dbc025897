"""The ledger's rules: which events earn a receipt, which stored message is one of ours, where the
chain goes next, and what a views query may ask. Pure functions over folded state and bytes; the
adapters (``writer.py``, ``app.py``) do the reading and appending."""

from __future__ import annotations

from dataclasses import dataclass

from nacl.signing import SigningKey

from writ_common import events as ev
from writ_common.envelope import UndecodableEvent, decode
from writ_common.errors import Refusal
from writ_common.fold import IntentView
from writ_common.receipts import GENESIS, ReceiptInvalid, build_receipt, ending, verify_receipt

STATS_BY = ("agent", "tool", "hour")


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last receipt of the chain: its position, its hash, and the stream sequence it sits at
    (the fence the next append names)."""

    position: int
    receipt_hash: str
    seq: int


@dataclass(frozen=True, slots=True)
class Ending:
    """How an intent ended, as its receipt will say it."""

    status: str
    stage: ev.Stage
    code: str
    reason: str


def earns_receipt(event_type: str) -> bool:
    """An event that ends an intent asks for its receipt (every other intent event only feeds the views)."""
    return event_type in ev.TERMINAL_TYPES


def ended(view: IntentView) -> Ending | Refusal:
    """Does this history end the intent, and how? A receipt vouches only for an intent whose whole
    course is in the log: its terminal event and the ``intent.submitted`` it answers.

    Returns:
        the ending, or a refusal: ``not_ended`` (no terminal event yet), ``no_intent`` (a terminal
        event without its submitted one: nothing to vouch for).
    """
    terminal = view.terminal
    if terminal is None:
        return Refusal(code="not_ended", reason=f"{view.intent_id} has no terminal event in its history")
    if view.submitted is None:
        return Refusal(
            code="no_intent", reason=f"{view.intent_id} ended ({terminal.type}) but the log holds no submitted intent"
        )
    stage, code, reason = ending(terminal.payload)
    return Ending(status=ev.TERMINAL_STATUS[terminal.type], stage=stage, code=code, reason=reason)


def own_receipt(data: bytes, public_key: str) -> ev.Receipt | Refusal:
    """``data`` as one of this ledger's receipts (decoded, hashed and signed with its key), or why not:
    ``undecodable`` (not a Writ event), ``not_a_receipt`` (another event), ``not_ours`` (a receipt
    that does not verify with ``public_key``: forged, altered, or another ledger's)."""
    try:
        payload = decode(data).payload
    except UndecodableEvent as exc:
        return Refusal(code="undecodable", reason=str(exc))
    if not isinstance(payload, ev.Receipt):
        return Refusal(code="not_a_receipt", reason=f"a {type(payload).__name__}, not a receipt")
    try:
        verify_receipt(payload, public_key)
    except ReceiptInvalid as exc:
        return Refusal(code="not_ours", reason=str(exc))
    return payload


def already_recorded(stored: bytes | None, public_key: str) -> bool:
    """Is the intent's receipt already written? Only when the message on its receipt subject is one
    of ours: a foreign message there (nothing, or a forgery) does not stand in for the receipt."""
    return stored is not None and not isinstance(own_receipt(stored, public_key), Refusal)


def head_of(receipt: ev.Receipt | None, seq: int) -> ChainHead:
    """The chain head at stream sequence ``seq`` whose newest receipt of ours is ``receipt``
    (None: there is none yet, the chain starts at genesis)."""
    if receipt is None:
        return ChainHead(0, GENESIS, seq)
    return ChainHead(receipt.position, receipt.receipt_hash, seq)


def next_receipt(view: IntentView, head: ChainHead, *, recorded_at: str, key: SigningKey, key_id: str) -> ev.Receipt:
    """The signed receipt for the ended intent ``view``, linked after ``head``."""
    return build_receipt(
        view,
        position=head.position + 1,
        prev_hash=head.receipt_hash,
        recorded_at=recorded_at,
        key=key,
        ledger_key_id=key_id,
    )


def receipt_headers(intent_id: str, head: ChainHead) -> dict[str, str]:
    """Nothing twice: one message id per intent (the stream drops a second receipt for it within
    its duplicate window), and the append is fenced on the head it was built after (another
    replica's receipt in between makes it fail, and the head is read again)."""
    return {"Nats-Msg-Id": f"receipt:{intent_id}", "Nats-Expected-Last-Sequence": str(head.seq)}


def head_after(receipt: ev.Receipt, seq: int, *, duplicate: bool) -> ChainHead | None:
    """The head once ``receipt`` was appended at ``seq``; None (read it again) when the stream
    answered with a duplicate: its ack names the earlier message, not a new head."""
    return None if duplicate else ChainHead(receipt.position, receipt.receipt_hash, seq)


def stats_by(by: str) -> Refusal | None:
    """The views' stats group by one of ``STATS_BY``."""
    if by in STATS_BY:
        return None
    return Refusal(code="invalid_by", reason=f"by must be one of {', '.join(STATS_BY)}")


def sql_rows(asked: int, most: int) -> int:
    """Rows a SQL query may return: what was asked, at least 1 and at most ``most``."""
    return max(1, min(asked, most))


def not_found(intent_id: str, where: str) -> Refusal:
    return Refusal(code="not_found", reason=f"no intent {intent_id!r} in {where}")
