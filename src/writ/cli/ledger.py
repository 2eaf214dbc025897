"""`writ ledger verify|export`: walk the whole receipt chain, online or from an export, offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from nats.aio.client import Client

from writ.cli.base import CliError, call, connect, console, report, run, settings
from writ_common import events as ev
from writ_common import subjects
from writ_common.bus import direct_get_batch
from writ_common.envelope import UndecodableEvent, decode
from writ_common.receipts import GENESIS, Finding, verify_chain

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


async def read_chain(nc: Client) -> list[ev.Receipt]:
    out = []
    for msg in await direct_get_batch(nc, subjects.LEDGER_STREAM, subjects.RECEIPTS_FILTER, batch=1024):
        payload = decode(msg.data).payload
        if not isinstance(payload, ev.Receipt):
            raise CliError("ledger_invalid", f"ledger message at {msg.headers} is not a receipt")
        out.append(payload)
    return out


async def terminal_intents(nc: Client) -> set[str]:
    """Every intent the log says has ended (the first terminal event of each)."""
    ended: set[str] = set()
    for event_type in sorted(ev.TERMINAL_TYPES):
        msgs = await direct_get_batch(nc, subjects.INTENTS_STREAM, subjects.intents_of_type(event_type), batch=1024)
        for msg in msgs:
            try:
                event = decode(msg.data)
            except UndecodableEvent:
                continue
            if event.envelope.intent_id and event.type == event_type:
                ended.add(event.envelope.intent_id)
    return ended


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
    """Walk the whole chain: hashes, signatures, links, one receipt per ended intent. Exit 1 on any problem."""
    if directory is not None:
        findings, count = report(lambda: _verify_export(directory))
    else:
        public_key, receipts, ended = run(_read_all())
        findings = verify_chain(receipts, public_key, terminal_intents=ended, first_prev_hash=GENESIS)
        count = len(receipts)
    report(lambda: print_findings(findings, count))


async def _read_all() -> tuple[str, list[ev.Receipt], set[str]]:
    async with connect(settings()) as nc:
        public_key = str((await call(nc, "ledger", "public_key", {}))["public_key"])
        return public_key, await read_chain(nc), await terminal_intents(nc)


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
    public_key, receipts, ended = run(_read_all())
    report(lambda: write_export(out, public_key, receipts, ended))
    count = len(receipts)
    console.print(f"exported {count} receipts to {out} · verify offline: writ ledger verify --dir {out}")
