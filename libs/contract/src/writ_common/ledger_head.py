"""The ledger's signed head: where the chain ended when the ledger was asked, in its own words.

A copy of the chain (an export) can lose its tail without breaking a single link. The head,
signed with the ledger's key, says how many receipts there were and which one was last, so a
verifier holding the ledger's key detects a chain cut short (or padded) after the fact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import msgspec
from nacl.signing import SigningKey

from writ_common import events as ev
from writ_common.digest import canonical_json
from writ_common.receipts import GENESIS, Finding
from writ_common.signing import SignatureInvalid, sign, verify

HEAD_KIND: Final = "writ.ledger.head.v1"  # in the signed body: a head signature is never a receipt's


class SignedHead(msgspec.Struct, frozen=True, kw_only=True):
    """The chain's head as the ledger signed it: ``count`` receipts, the last at ``position``
    with ``receipt_hash`` (``GENESIS`` and 0 for an empty chain)."""

    kind: Literal["writ.ledger.head.v1"] = HEAD_KIND
    count: int
    position: int
    receipt_hash: str
    signed_at: str
    ledger_key_id: str
    signature: str = ""

    def signed_bytes(self) -> bytes:
        """What the signature covers: the RFC 8785 canonical JSON of every field but ``signature``."""
        body = msgspec.to_builtins(self)
        body.pop("signature", None)
        return canonical_json(body)


class HeadInvalid(Exception):
    """The head is not signed by the given key."""


def sign_head(key: SigningKey, *, position: int, receipt_hash: str, signed_at: str, ledger_key_id: str) -> SignedHead:
    """The ledger's signed statement that its chain holds ``position`` receipts, ending at ``receipt_hash``."""
    unsigned = SignedHead(
        count=position, position=position, receipt_hash=receipt_hash, signed_at=signed_at, ledger_key_id=ledger_key_id
    )
    return msgspec.structs.replace(unsigned, signature=sign(key, unsigned.signed_bytes()))


def verify_head(head: SignedHead, public_key: str) -> None:
    """Check the head's signature.

    Raises:
        HeadInvalid: the signature does not verify with ``public_key``.
    """
    try:
        verify(public_key, head.signed_bytes(), head.signature)
    except SignatureInvalid as exc:
        raise HeadInvalid("the signed head is not signed by the ledger's key") from exc


def head_findings(receipts: Sequence[ev.Receipt], head: SignedHead) -> list[Finding]:
    """The chain must end exactly where the signed head says: a missing tail or extra receipts are named."""
    last_position = receipts[-1].position if receipts else 0
    last_hash = receipts[-1].receipt_hash if receipts else GENESIS
    if len(receipts) == head.count and last_position == head.position and last_hash == head.receipt_hash:
        return []
    if len(receipts) < head.count or last_position < head.position:
        code, said = "truncated", "receipts are missing from its end"
    else:
        code, said = "head_mismatch", "it does not end at the receipt the head names"
    return [
        Finding(
            code,
            last_position,
            None,
            f"{code}: the chain ends at position {last_position} ({len(receipts)} receipts), but the ledger signed"
            f" a head of {head.count} receipts ending at position {head.position} ({head.receipt_hash}) at"
            f" {head.signed_at}: {said}",
        )
    ]
