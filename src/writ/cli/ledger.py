"""`writ ledger verify|export`: walk the whole receipt chain, online or from an export, offline."""

from __future__ import annotations

import json
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
from writ_common.receipts import GENESIS, Finding, history_findings, verify_chain
from writ_common.stranded import stranded_findings

ledger_app = typer.Typer(help="Verify the whole receipt chain; export it for offline checks.", no_args_is_help=True)

EXPORT_README = """\
Writ ledger export
==================

receipts.jsonl  one receipt per line (JSON), in ledger order
ledger.pub      the ledger's Ed25519 public key (base64)
terminal.txt    the ids of every intent the log says has ended

Verify offline with Writ:  writ ledger verify --dir THIS_DIRECTORY

Or by hand, for each line r (in order):
  1. body = r without "receipt_hash" and "signature"; canonical = RFC 8785 JSON of body;
     check r.receipt_hash == "sha256:" + hex(sha256(canonical)).
  2. check Ed25519 signature r.signature (base64) over the ASCII bytes of r.receipt_hash
     with ledger.pub.
  3. check r.prev_hash == previous line's receipt_hash (the first: "sha256:" + 64 zeros),
     and r.position == previous position + 1.
  4. every intent id in terminal.txt has exactly one receipt, and every receipt's intent is there.
"""


async def read_chain(nc: Client) -> tuple[list[ev.Receipt], list[Finding]]:
    """The ledger's receipts in order, and a finding for each message on the ledger stream that
    is not one of the ledger's receipts (the chain skips them; they are reported, never followed)."""
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
        if not isinstance(payload, ev.Receipt):
            foreign.append(
                Finding("foreign_message", None, None, f"foreign_message at ledger seq {seq}: {why}; not in the chain")
            )
            continue
        out.append(payload)
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


def print_findings(findings: list[Finding], count: int) -> None:
    if not findings:
        console.print(f"[green]valid[/] · {count} receipts, every link, hash and signature checked")
        return
    for finding in findings:
        console.print(f"[red]{finding.message}[/]")
    raise CliError("ledger_invalid", f"{len(findings)} problem(s) in {count} receipts (listed above)")


def _verify_export(directory: Path) -> tuple[list[Finding], int]:
    try:
        public_key = (directory / "ledger.pub").read_text().strip()
        lines = (directory / "receipts.jsonl").read_bytes().splitlines()
        ended = set((directory / "terminal.txt").read_text().split())
    except OSError as exc:
        raise CliError("export_unreadable", f"{directory}: {exc.strerror or exc}") from exc
    receipts = []
    for number, line in enumerate(lines, start=1):
        try:
            receipts.append(msgspec.json.decode(line, type=ev.Receipt))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CliError("ledger_invalid", f"receipts.jsonl line {number} is not a receipt: {exc}") from exc
    return verify_chain(receipts, public_key, terminal_intents=ended, first_prev_hash=GENESIS), len(receipts)


@ledger_app.command("verify")
def ledger_verify(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="verify an export made by `writ ledger export` (offline)")
    ] = None,
) -> None:
    """Walk the whole chain: hashes, signatures, links, one receipt per ended intent, no intent left
    open past its deadline. Exit 1 on any problem."""
    if directory is not None:
        findings, count = report(lambda: _verify_export(directory))
    else:
        public_key, receipts, foreign, views = run(_read_all())
        ended = {intent_id for intent_id, view in views.items() if view.is_terminal}
        findings = [
            *foreign,
            *verify_chain(receipts, public_key, terminal_intents=ended, first_prev_hash=GENESIS),
            *history_findings(receipts, views),
            *stranded_findings(views, datetime.now(UTC)),
        ]
        count = len(receipts)
    report(lambda: print_findings(findings, count))


async def _read_all() -> tuple[str, list[ev.Receipt], list[Finding], dict[str, IntentView]]:
    async with connect(settings()) as nc:
        public_key = str((await call(nc, "ledger", "public_key", {}))["public_key"])
        receipts, foreign = await read_chain(nc)
        return public_key, receipts, foreign, await intent_views(nc)


def write_export(out: Path, public_key: str, receipts: list[ev.Receipt], ended: set[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "receipts.jsonl").open("wb") as fh:
        for receipt in receipts:
            fh.write(msgspec.json.encode(receipt) + b"\n")
    (out / "ledger.pub").write_text(public_key + "\n")
    (out / "terminal.txt").write_text("".join(f"{i}\n" for i in sorted(ended)))
    (out / "README.txt").write_text(EXPORT_README)
    (out / "manifest.json").write_text(json.dumps({"receipts": len(receipts), "ended_intents": len(ended)}) + "\n")


@ledger_app.command("export")
def ledger_export(
    out: Annotated[Path, typer.Argument(help="directory to write receipts.jsonl, ledger.pub, terminal.txt into")],
) -> None:
    """Write the receipts as JSON Lines with the ledger's public key, for third-party verification."""
    public_key, receipts, _foreign, views = run(_read_all())
    ended = {intent_id for intent_id, view in views.items() if view.is_terminal}
    report(lambda: write_export(out, public_key, receipts, ended))
    count = len(receipts)
    console.print(f"exported {count} receipts to {out} · verify offline: writ ledger verify --dir {out}")
