"""Someone who holds a ledger export (a copy on a shared drive, an attachment in a ticket) rewrites
it before it reaches the auditor. They cannot sign as the ledger, so they try two things an
export that trusts itself would accept: re-sign the whole chain with a key of their own and swap
``ledger.pub``, or cut the tail off the chain and edit ``terminal.txt`` to match.

The auditor pins the ledger's key (``--public-key-file`` or the fingerprint printed at export),
and the ledger signs the chain's head, so neither passes `writ ledger verify --dir`.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import msgspec
import pytest

from cli_runner import INTENT_ID, Writ
from writ.runtime.supervisor import Plane
from writ_common import events as ev
from writ_common.digest import canonical_json
from writ_common.receipts import GENESIS, receipt_hash
from writ_common.signing import generate_key, key_id, public_key_b64, sign

pytestmark = pytest.mark.security


def ended_intents(writ: Writ, count: int) -> list[str]:
    """``count`` intents that end (rejected: no such tool), so each gets a receipt."""
    agent = f"exporter-{uuid.uuid4().hex[:8]}"
    registered = writ("agent", "register", agent, "--owner", "audit")
    assert registered.exit_code == 0, registered.output
    ids = []
    for _ in range(count):
        submitted = writ("intent", "submit", f"nowhere-{uuid.uuid4().hex[:6]}/nothing", "--as", agent, "--wait")
        found = INTENT_ID.search(submitted.stdout)
        assert found, submitted.output
        ids.append(found.group(1))
    return ids


def export(writ: Writ, out: Path) -> str:
    made = writ("ledger", "export", str(out))
    assert made.exit_code == 0, made.output
    return str(made.stdout)


def pinned_key(plane: Plane) -> Path:
    """The key the auditor took from the ledger's host, out of band."""
    return plane.data_dir / "ledger" / "ledger.pub"


def re_sign_with_an_own_key(export_dir: Path) -> None:
    """The attack: alter a receipt, then re-hash, re-link and re-sign every receipt (and the signed
    head, where there is one) with the attacker's key, and put its public half in ``ledger.pub``."""
    key = generate_key()
    public = public_key_b64(key)
    lines = (export_dir / "receipts.jsonl").read_bytes().splitlines()
    prev, out = GENESIS, []
    for number, line in enumerate(lines):
        receipt = msgspec.json.decode(line, type=ev.Receipt)
        changes = {"prev_hash": prev, "ledger_key_id": key_id(public)}
        if number == 0:
            changes["reason"] = "nothing to see here"
        unsigned = msgspec.structs.replace(receipt, **changes, receipt_hash="", signature="")
        digest = receipt_hash(unsigned)
        signed = msgspec.structs.replace(unsigned, receipt_hash=digest, signature=sign(key, digest.encode()))
        out.append(msgspec.json.encode(signed) + b"\n")
        prev = digest
    (export_dir / "receipts.jsonl").write_bytes(b"".join(out))
    (export_dir / "ledger.pub").write_text(public + "\n")
    head_file = export_dir / "head.json"
    if head_file.exists():
        head = json.loads(head_file.read_text())
        head.update(receipt_hash=prev, ledger_key_id=key_id(public))
        body = {k: v for k, v in head.items() if k != "signature"}
        head["signature"] = sign(key, canonical_json(body))
        head_file.write_text(json.dumps(head))


def test_an_export_re_signed_with_a_swapped_key_is_refused_against_the_pinned_key(
    writ: Writ, plane: Plane, tmp_path: Path
) -> None:
    ended_intents(writ, 2)
    out = tmp_path / "export"
    printed = export(writ, out)
    fingerprint = next(word for word in printed.split() if word.startswith("sha256:"))

    genuine = writ("ledger", "verify", "--dir", str(out), "--public-key-file", str(pinned_key(plane)))
    assert genuine.exit_code == 0, genuine.output
    assert writ("ledger", "verify", "--dir", str(out), "--fingerprint", fingerprint).exit_code == 0

    re_sign_with_an_own_key(out)
    unpinned = writ("ledger", "verify", "--dir", str(out))
    assert "self-consistent only" in unpinned.stdout, unpinned.output  # and says which key it took
    assert fingerprint not in unpinned.stdout, unpinned.output

    for pin in (["--public-key-file", str(pinned_key(plane))], ["--fingerprint", fingerprint]):
        refused = writ("ledger", "verify", "--dir", str(out), *pin)
        assert refused.exit_code == 1, refused.output
        assert refused.stderr.strip().startswith("error: ledger_key_mismatch: "), refused.output
        assert fingerprint in refused.stderr


def test_a_cut_tail_with_a_matching_terminal_list_is_refused_by_the_signed_head(
    writ: Writ, plane: Plane, tmp_path: Path
) -> None:
    ended_intents(writ, 2)
    out = tmp_path / "export"
    export(writ, out)
    assert writ("ledger", "verify", "--dir", str(out)).exit_code == 0
    # The attack: drop the last receipt and its intent, so what is left is a consistent chain.
    lines = (out / "receipts.jsonl").read_bytes().splitlines(keepends=True)
    cut = json.loads(lines[-1])
    (out / "receipts.jsonl").write_bytes(b"".join(lines[:-1]))
    ended = (out / "terminal.txt").read_text().split()
    (out / "terminal.txt").write_text("".join(f"{i}\n" for i in ended if i != cut["intent_id"]))

    for pin in ([], ["--public-key-file", str(pinned_key(plane))]):
        refused = writ("ledger", "verify", "--dir", str(out), *pin)
        assert refused.exit_code == 1, refused.output
        assert f"truncated: the chain ends at position {cut['position'] - 1}" in refused.stdout, refused.output

    (out / "head.json").unlink()  # and without the head, nothing says where the chain ends
    refused = writ("ledger", "verify", "--dir", str(out))
    assert refused.exit_code == 1 and "error: head_missing: " in refused.stderr, refused.output
