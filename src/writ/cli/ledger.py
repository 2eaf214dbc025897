"""`writ ledger verify|export`: walk the whole receipt chain, online or from an export, offline."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from nats.aio.client import Client

from writ.cli.base import CliError, call, connect, console, report, run, settings
from writ_common import events as ev
from writ_common import subjects
from writ_common.bus import direct_get_batch, stored
from writ_common.envelope import StoredEvent, UndecodableEvent
from writ_common.fold import IntentView, fold_intent
from writ_common.ledger_head import HeadInvalid, SignedHead, head_findings, verify_head
from writ_common.receipts import GENESIS, Finding, ReceiptInvalid, history_findings, verify_chain, verify_receipt
from writ_common.signing import fingerprint
from writ_common.stranded import stranded_findings

ledger_app = typer.Typer(help="Verify the whole receipt chain; export it for offline checks.", no_args_is_help=True)

EXPORT_README = """\
Writ ledger export
==================

receipts.jsonl  one receipt per line (JSON), in ledger order, up to the signed head
ledger.pub      the ledger's Ed25519 public key (base64), as the export says; do not trust it alone
head.json       the chain's head, signed by the ledger: how many receipts, the last one's position
                and receipt_hash, and when it was signed
terminal.txt    the ids of every intent the log says has ended (up to the head)

Anyone who can edit this directory can re-sign all of it with a key of their own and swap
ledger.pub. So verify against the ledger's key as you know it from elsewhere: its fingerprint
(sha256 of the raw 32-byte key) is printed by `writ ledger export`, and the key itself is
<data dir>/ledger/ledger.pub on the ledger's host.

Verify offline with Writ:
  writ ledger verify --dir THIS_DIRECTORY --fingerprint sha256:...
  writ ledger verify --dir THIS_DIRECTORY --public-key-file LEDGER.PUB
Without either, verify checks only that the export agrees with itself, and says so.

Or by hand:
  0. check sha256(base64-decode(ledger.pub)) is the fingerprint you trust.
  H. h = head.json; body = h without "signature"; check the Ed25519 signature h.signature
     (base64) over the RFC 8785 canonical JSON of body, with ledger.pub.
Then for each line r (in order):
  1. body = r without "receipt_hash" and "signature"; canonical = RFC 8785 JSON of body;
     check r.receipt_hash == "sha256:" + hex(sha256(canonical)).
  2. check Ed25519 signature r.signature (base64) over the ASCII bytes of r.receipt_hash
     with ledger.pub.
  3. check r.prev_hash == previous line's receipt_hash (the first: "sha256:" + 64 zeros),
     and r.position == previous position + 1.
  4. every intent id in terminal.txt has exactly one receipt, and every receipt's intent is there.
Finally: the number of lines is h.count, and the last line has h.position and h.receipt_hash
(none of them cut off the end, none added).
"""


async def read_chain(nc: Client, public_key: str) -> tuple[list[ev.Receipt], list[Finding]]:
    """The ledger's receipts in order, and a finding for each message on the ledger stream that
    is not one of the ledger's receipts, hashed and signed with ``public_key`` (the chain skips
    them, as the ledger itself does; they are reported, never followed)."""
    out: list[ev.Receipt] = []
    foreign: list[Finding] = []
    for msg in await direct_get_batch(nc, subjects.LEDGER_STREAM, subjects.RECEIPTS_FILTER, batch=1024):
        seq = (msg.headers or {}).get("Nats-Sequence", "?")
        try:
            payload = stored(msg).payload
        except UndecodableEvent as exc:
            payload, why = None, exc.reason
        else:
            why = f"a {type(payload).__name__}, not a receipt"
        if isinstance(payload, ev.Receipt):
            try:
                verify_receipt(payload, public_key)
            except ReceiptInvalid as exc:
                why = f"a receipt for {payload.intent_id} that is not the ledger's ({exc})"
            else:
                out.append(payload)
                continue
        foreign.append(
            Finding("foreign_message", None, None, f"foreign_message at ledger seq {seq}: {why}; not in the chain")
        )
    return out, foreign


async def intent_views(nc: Client) -> dict[str, IntentView]:
    """Every intent's admitted history, folded: what the receipts must agree with."""
    histories: dict[str, list[StoredEvent]] = {}
    for msg in await direct_get_batch(nc, subjects.INTENTS_STREAM, f"{subjects.INTENT_PREFIX}.>", batch=1024):
        try:
            event = stored(msg)
        except UndecodableEvent:
            continue  # forged or malformed: no reader believes it, and neither does verify
        histories.setdefault(event.envelope.intent_id or "", []).append(event)
    return {intent_id: fold_intent(events) for intent_id, events in histories.items()}


def print_findings(findings: list[Finding], count: int, trusted: str = "") -> None:
    if not findings:
        console.print(
            f"[green]valid[/] · {count} receipts, every link, hash and signature checked{trusted}", soft_wrap=True
        )
        return
    for finding in findings:
        console.print(f"[red]{finding.message}[/]", soft_wrap=True)
    raise CliError("ledger_invalid", f"{len(findings)} problem(s) in {count} receipts (listed above)")


def pinned_key(public_key_file: Path | None, pinned_fingerprint: str | None) -> str | None:
    """The fingerprint of the key the verifier trusts (from a key file or as given), or None."""
    if public_key_file is not None and pinned_fingerprint is not None:
        raise CliError("invalid_option", "give --public-key-file or --fingerprint, not both")
    if pinned_fingerprint is not None:
        wanted = pinned_fingerprint.strip().lower().removeprefix("sha256:")
        if not re.fullmatch(r"[0-9a-f]{64}", wanted):
            raise CliError(
                "invalid_fingerprint", "a fingerprint is sha256: and 64 hex digits, as `writ ledger export` prints it"
            )
        return "sha256:" + wanted
    if public_key_file is not None:
        try:
            return fingerprint(public_key_file.read_text().strip())
        except OSError as exc:
            raise CliError("file_unreadable", f"cannot read {public_key_file}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise CliError(
                "invalid_public_key", f"{public_key_file} does not hold a base64 Ed25519 public key"
            ) from exc
    return None


def check_pin(public_key: str, pinned: str | None, where: str) -> str:
    """What the verdict rests on; refuses a key that is not the pinned one.

    Raises:
        CliError: ``ledger_key_mismatch`` when ``public_key`` is not the pinned key.
    """
    try:
        found = fingerprint(public_key)
    except ValueError as exc:
        raise CliError("invalid_public_key", f"{where} does not hold a base64 Ed25519 public key") from exc
    if pinned is None:
        return found
    if found != pinned:
        raise CliError(
            "ledger_key_mismatch",
            f"{where} is the key {found}, not the pinned ledger key {pinned}: these receipts were not signed"
            " by the ledger you trust (re-signed with another key?)",
        )
    return found


def _verify_export(directory: Path, pinned: str | None) -> tuple[list[Finding], int, str, SignedHead]:
    try:
        public_key = (directory / "ledger.pub").read_text().strip()
        lines = (directory / "receipts.jsonl").read_bytes().splitlines()
        ended = set((directory / "terminal.txt").read_text().split())
    except OSError as exc:
        raise CliError("export_unreadable", f"{directory}: {exc.strerror or exc}") from exc
    found = check_pin(public_key, pinned, f"{directory / 'ledger.pub'}")
    try:
        head = msgspec.json.decode((directory / "head.json").read_bytes(), type=SignedHead)
    except FileNotFoundError as exc:
        raise CliError(
            "head_missing",
            f"{directory} has no head.json, the ledger's signed statement of where the chain ends: without it a cut"
            " tail cannot be told from a whole chain (export again with `writ ledger export`)",
        ) from exc
    except OSError as exc:
        raise CliError("export_unreadable", f"{directory / 'head.json'}: {exc.strerror or exc}") from exc
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CliError("ledger_invalid", f"head.json is not a signed head: {exc}") from exc
    receipts = []
    for number, line in enumerate(lines, start=1):
        try:
            receipts.append(msgspec.json.decode(line, type=ev.Receipt))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CliError("ledger_invalid", f"receipts.jsonl line {number} is not a receipt: {exc}") from exc
    findings = verify_chain(receipts, public_key, terminal_intents=ended, first_prev_hash=GENESIS)
    try:
        verify_head(head, public_key)
    except HeadInvalid as exc:
        findings.append(Finding("bad_head_signature", None, None, f"bad_head_signature: {exc} (head.json altered)"))
    else:
        findings += head_findings(receipts, head)
    return findings, len(receipts), found, head


def trust_note(found: str, pinned: str | None) -> str:
    if pinned is not None:
        return f" against the pinned ledger key {found}"
    return ""


def warn_unpinned(found: str, source: str) -> None:
    console.print(
        f"[yellow]self-consistent only:[/] checked against {source}, key fingerprint {found}. Anyone who can edit"
        " the receipts can re-sign them with a key of their own: compare that fingerprint with the ledger's"
        " (`writ ledger export` prints it), or pin it with --public-key-file or --fingerprint.",
        soft_wrap=True,
    )


@ledger_app.command("verify")
def ledger_verify(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="verify an export made by `writ ledger export` (offline)")
    ] = None,
    public_key_file: Annotated[
        Path | None,
        typer.Option(
            "--public-key-file", help="the ledger's public key as you know it (its ledger.pub); refuse any other"
        ),
    ] = None,
    pinned_fingerprint: Annotated[
        str | None,
        typer.Option(
            "--fingerprint", help="the ledger key's fingerprint (sha256:...) as `writ ledger export` printed it"
        ),
    ] = None,
) -> None:
    """Walk the whole chain: hashes, signatures, links, one receipt per ended intent, no intent left
    open past its deadline. Exit 1 on any problem.

    Against a pinned key (--public-key-file or --fingerprint) a chain signed by any other key is
    refused; without one, the verdict says it checked only that the chain agrees with itself.
    """
    pinned = report(lambda: pinned_key(public_key_file, pinned_fingerprint))
    if directory is not None:
        findings, count, found, head = report(lambda: _verify_export(directory, pinned))
        source = f"the export's own {directory / 'ledger.pub'}"
        ends = f"; it ends at the ledger's signed head (position {head.position}, signed {head.signed_at})"
    else:
        public_key, receipts, foreign, views = run(_read_all())
        found = report(lambda: check_pin(public_key, pinned, "the ledger's public_key"))
        ended = {intent_id for intent_id, view in views.items() if view.is_terminal}
        findings = [
            *foreign,
            *verify_chain(receipts, public_key, terminal_intents=ended, first_prev_hash=GENESIS),
            *history_findings(receipts, views),
            *stranded_findings(views, datetime.now(UTC)),
        ]
        count = len(receipts)
        source = "the key the ledger's public_key command gave"
        ends = ""
    if pinned is None:
        warn_unpinned(found, source)
    report(lambda: print_findings(findings, count, trust_note(found, pinned) + ends))


async def _read_all() -> tuple[str, list[ev.Receipt], list[Finding], dict[str, IntentView]]:
    async with connect(settings()) as nc:
        public_key = str((await call(nc, "ledger", "public_key", {}))["public_key"])
        receipts, foreign = await read_chain(nc, public_key)
        return public_key, receipts, foreign, await intent_views(nc)


async def _read_export() -> tuple[str, SignedHead, list[ev.Receipt], set[str]]:
    """The key, the signed head, the receipts up to it, and the intents ended by then.

    The head is read first, then the receipts (all of those up to the head are there), then the
    log: every intent with a receipt up to the head has ended in it by then. The intents listed as
    ended are those: one that ended but whose receipt the ledger had not written by the head
    (moments ago, or after it) belongs to a later export, and a stalled ledger is what the live
    `writ ledger verify` reports. A receipt whose intent the log does not show ended stays out of
    the list, so verifying the export reports it.
    """
    async with connect(settings()) as nc:
        head = msgspec.convert(await call(nc, "ledger", "signed_head", {}), SignedHead)
        public_key = str((await call(nc, "ledger", "public_key", {}))["public_key"])
        receipts, _foreign = await read_chain(nc, public_key)
        views = await intent_views(nc)
    try:
        verify_head(head, public_key)
    except HeadInvalid as exc:
        raise CliError(
            "ledger_invalid", f"the ledger's signed head does not verify with its public key: {exc}"
        ) from exc
    kept = [r for r in receipts if r.position <= head.position]
    ended = {r.intent_id for r in kept if (view := views.get(r.intent_id)) is not None and view.is_terminal}
    return public_key, head, kept, ended


def write_export(out: Path, public_key: str, head: SignedHead, receipts: list[ev.Receipt], ended: set[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "receipts.jsonl").open("wb") as fh:
        for receipt in receipts:
            fh.write(msgspec.json.encode(receipt) + b"\n")
    (out / "ledger.pub").write_text(public_key + "\n")
    (out / "head.json").write_bytes(msgspec.json.encode(head) + b"\n")
    (out / "terminal.txt").write_text("".join(f"{i}\n" for i in sorted(ended)))
    (out / "README.txt").write_text(EXPORT_README)
    manifest = {"receipts": len(receipts), "ended_intents": len(ended), "ledger_key": fingerprint(public_key)}
    (out / "manifest.json").write_text(json.dumps(manifest) + "\n")


@ledger_app.command("export")
def ledger_export(
    out: Annotated[
        Path, typer.Argument(help="directory to write receipts.jsonl, ledger.pub, head.json, terminal.txt into")
    ],
) -> None:
    """Write the receipts up to the ledger's signed head as JSON Lines, with its public key, for third-party
    verification; prints the key's fingerprint for the verifier to pin."""
    public_key, head, receipts, ended = run(_read_export())
    report(lambda: write_export(out, public_key, head, receipts, ended))
    found = fingerprint(public_key)
    console.print(
        f"exported {len(receipts)} receipts (signed head: position {head.position}, {head.signed_at}) to {out}",
        soft_wrap=True,
    )
    console.print(f"ledger key fingerprint {found}", soft_wrap=True)
    console.print(f"verify offline: writ ledger verify --dir {out} --fingerprint {found}", soft_wrap=True)
