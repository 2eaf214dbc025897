"""The receipt chain's verifier names every break and where it is."""

from __future__ import annotations

import msgspec
import pytest
from nacl.signing import SigningKey

from writ_common import events as ev
from writ_common.ledger_head import HeadInvalid, SignedHead, head_findings, sign_head, verify_head
from writ_common.receipts import GENESIS, receipt_hash, verify_chain
from writ_common.signing import fingerprint, generate_key, key_id, public_key_b64, sign

pytestmark = pytest.mark.unit

KEY = generate_key()
PUBLIC = public_key_b64(KEY)


def seal(receipt: ev.Receipt, key: SigningKey = KEY) -> ev.Receipt:
    digest = receipt_hash(receipt)
    return msgspec.structs.replace(receipt, receipt_hash=digest, signature=sign(key, digest.encode()))


def chain(n: int) -> list[ev.Receipt]:
    out: list[ev.Receipt] = []
    prev = GENESIS
    for i in range(1, n + 1):
        r = seal(
            ev.Receipt(
                position=i,
                intent_id=f"in-{i}",
                agent_id="a",
                status="succeeded",
                stage="execute",
                code="ok",
                reason="ran",
                event_ids=[f"e{i}"],
                recorded_at="2026-11-24T00:00:00Z",
                ledger_key_id=key_id(PUBLIC),
                prev_hash=prev,
            )
        )
        out.append(r)
        prev = r.receipt_hash
    return out


def codes(findings: list) -> list[tuple[str, int | None]]:  # type: ignore[type-arg]
    return [(f.code, f.position) for f in findings]


def test_an_intact_chain_verifies() -> None:
    receipts = chain(5)
    ended = {r.intent_id for r in receipts}
    assert verify_chain(receipts, PUBLIC, terminal_intents=ended, first_prev_hash=GENESIS) == []


def test_one_altered_byte_is_named_at_its_position() -> None:
    receipts = chain(5)
    receipts[2] = msgspec.structs.replace(receipts[2], reason="rao")
    assert codes(verify_chain(receipts, PUBLIC, first_prev_hash=GENESIS)) == [("hash_mismatch", 3)]


def test_a_deleted_receipt_breaks_the_link_after_it() -> None:
    receipts = chain(5)
    del receipts[1]
    assert codes(verify_chain(receipts, PUBLIC, first_prev_hash=GENESIS)) == [("broken_link", 3), ("position_gap", 3)]


def test_two_reordered_receipts_are_named() -> None:
    receipts = chain(5)
    receipts[1], receipts[2] = receipts[2], receipts[1]
    found = codes(verify_chain(receipts, PUBLIC, first_prev_hash=GENESIS))
    assert ("broken_link", 3) in found and ("broken_link", 2) in found


def test_an_inserted_forgery_is_named() -> None:
    receipts = chain(3)
    forged = seal(
        msgspec.structs.replace(receipts[2], intent_id="in-forged", prev_hash=receipts[1].receipt_hash), generate_key()
    )
    receipts.insert(2, forged)
    found = codes(verify_chain(receipts, PUBLIC, first_prev_hash=GENESIS))
    assert ("bad_signature", 3) in found
    assert ("broken_link", 3) in found  # the genuine receipt after it no longer links


def test_duplicates_and_receipts_that_do_not_match_terminal_intents() -> None:
    receipts = chain(3)
    again = seal(msgspec.structs.replace(receipts[0], position=4, prev_hash=receipts[2].receipt_hash))
    receipts.append(again)
    found = codes(verify_chain(receipts, PUBLIC, terminal_intents={"in-1", "in-2", "in-9"}, first_prev_hash=GENESIS))
    assert ("duplicate_receipt", 4) in found
    assert ("terminal_without_receipt", None) in found
    assert ("receipt_without_terminal", 3) in found


def signed_head_of(receipts: list[ev.Receipt], key: SigningKey = KEY) -> SignedHead:
    last = receipts[-1]
    return sign_head(
        key, position=last.position, receipt_hash=last.receipt_hash, signed_at="t", ledger_key_id=key_id(PUBLIC)
    )


def test_the_signed_head_names_a_cut_tail_and_a_padded_one() -> None:
    receipts = chain(4)
    head = signed_head_of(receipts)
    verify_head(head, PUBLIC)
    assert head_findings(receipts, head) == []
    assert [f.code for f in head_findings(receipts[:3], head)] == ["truncated"]
    assert "the chain ends at position 3" in head_findings(receipts[:3], head)[0].message
    assert [f.code for f in head_findings(receipts, signed_head_of(receipts[:3]))] == ["head_mismatch"]


def test_a_head_altered_or_signed_by_another_key_does_not_verify() -> None:
    head = signed_head_of(chain(2))
    with pytest.raises(HeadInvalid):
        verify_head(msgspec.structs.replace(head, count=1, position=1), PUBLIC)
    with pytest.raises(HeadInvalid):
        verify_head(signed_head_of(chain(2), generate_key()), PUBLIC)
    assert fingerprint(PUBLIC).startswith("sha256:") and len(fingerprint(PUBLIC)) == 71
