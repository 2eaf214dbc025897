"""Receipts: show one, and verify one (from the ledger, or offline from a file) against the ledger's key."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from nats.aio.client import Client

from writ.cli import render
from writ.cli.base import CliError, call, connect, console, fail, report, run, settings
from writ.cli.intents import check_intent_id
from writ_common.events import Receipt
from writ_common.settings import WritSettings

receipt_app = typer.Typer(help="Show and verify the ledger's signed receipts.", no_args_is_help=True)

RECEIPT_FIELDS = frozenset(Receipt.__struct_fields__)


def canonical_json(receipt: Receipt) -> bytes:
    """How `writ receipt show --json` writes a receipt; a receipt file must be exactly this."""
    return msgspec.json.format(msgspec.json.encode(receipt), indent=2) + b"\n"


def invalid(message: str) -> CliError:
    return CliError("receipt_invalid", message)


# -- reading receipts -------------------------------------------------------------------------------


async def fetch_stored(nc: Client, intent_id: str) -> tuple[Receipt, int]:
    """The receipt of ``intent_id`` and its sequence in WRIT_LEDGER."""
    from writ_common import subjects
    from writ_common.bus import last_on_subject
    from writ_common.envelope import decode

    check_intent_id(intent_id)
    raw = await last_on_subject(
        nc.jetstream(timeout=5), subjects.LEDGER_STREAM, subjects.any_receipt_subject(intent_id)
    )
    if raw is None:
        fail(
            "no_receipt",
            f"no receipt for {intent_id} yet: it may still be in flight (`writ intent status {intent_id}`)",
        )
    payload = decode(raw.data or b"").payload
    if not isinstance(payload, Receipt):
        raise invalid(f"the ledger message for {intent_id} is not a receipt")
    return payload, int(raw.seq or 0)


def parse_receipt_file(data: bytes, name: str) -> Receipt:
    """A receipt from the bytes of a file, strictly: exact fields, exact types.

    Raises:
        CliError: ``receipt_invalid``, saying what is wrong.
    """
    try:
        obj = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise invalid(f"{name} holds a JSON {type(obj).__name__}, not a receipt object")
    unknown, missing = sorted(set(obj) - RECEIPT_FIELDS), sorted(RECEIPT_FIELDS - set(obj))
    if unknown:
        raise invalid(f"{name} has field(s) a receipt does not: {', '.join(unknown)}")
    if missing:
        raise invalid(f"{name} lacks receipt field(s): {', '.join(missing)}")
    try:
        return msgspec.convert(obj, Receipt, strict=True)
    except msgspec.ValidationError as exc:
        raise invalid(f"{name} is not a well-formed receipt: {exc}") from exc


# -- the ledger's public key ------------------------------------------------------------------------


def key_from_options(public_key: str | None, public_key_file: Path | None) -> tuple[str, str] | None:
    if public_key and public_key_file:
        fail("invalid_option", "give --public-key or --public-key-file, not both")
    if public_key:
        return public_key.strip(), "--public-key"
    if public_key_file:
        try:
            return public_key_file.read_text().strip(), str(public_key_file)
        except OSError as exc:
            fail("file_unreadable", f"cannot read {public_key_file}: {exc.strerror or exc}")
    return None


def key_from_data_dir(cfg: WritSettings) -> tuple[str, str] | None:
    path = cfg.data_dir / "ledger" / "ledger.pub"
    try:
        return path.read_text().strip(), str(path)
    except OSError:
        return None


async def key_from_plane(nc: Client) -> tuple[str, str]:
    found = await call(nc, "ledger", "public_key", {})
    return str(found["public_key"]), "the ledger's public_key command"


async def plane_or_local_key(nc: Client, cfg: WritSettings) -> tuple[str, str]:
    from writ_common.commands import CommandError

    try:
        return await key_from_plane(nc)
    except CommandError:
        found = key_from_data_dir(cfg)
        if found is None:
            raise
        return found


# -- checks -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    receipt: Receipt
    key_source: str
    chain: str


def check_signed(receipt: Receipt, public_key: str) -> None:
    """Hash, then signer, then signature.

    Raises:
        CliError: ``receipt_invalid`` naming the first failed check, or ``invalid_public_key``.
    """
    from writ_common.receipts import ReceiptInvalid, receipt_hash, verify_receipt
    from writ_common.signing import key_id

    try:
        given_key_id = key_id(public_key)
    except ValueError as exc:
        raise CliError("invalid_public_key", "the ledger public key is not base64 Ed25519") from exc
    digest = receipt_hash(receipt)
    if digest != receipt.receipt_hash:
        raise invalid(f"hash mismatch: the receipt body hashes to {digest}, not {receipt.receipt_hash}")
    if given_key_id != receipt.ledger_key_id:
        raise invalid(f"wrong key: the receipt was signed by {receipt.ledger_key_id}, the given key is {given_key_id}")
    try:
        verify_receipt(receipt, public_key)
    except ReceiptInvalid as exc:
        raise invalid(str(exc)) from exc


async def check_chain(nc: Client, receipt: Receipt, seq: int) -> str:
    """The receipt's link to the one before it in WRIT_LEDGER; returns what was checked."""
    from nats.js.errors import NotFoundError

    from writ_common import subjects
    from writ_common.envelope import decode
    from writ_common.receipts import GENESIS, receipt_hash

    if receipt.position == 1:
        if receipt.prev_hash != GENESIS:
            raise invalid(f"broken chain: receipt #1 must link to the genesis hash, not {receipt.prev_hash}")
        return "ok · the first receipt: links to the genesis hash"
    try:
        raw = await nc.jetstream(timeout=5).get_msg(subjects.LEDGER_STREAM, seq - 1, direct=True)
    except NotFoundError as exc:
        raise invalid(
            f"broken chain: the receipt before #{receipt.position} (stream seq {seq - 1}) is missing"
        ) from exc
    prev = decode(raw.data or b"").payload
    if not isinstance(prev, Receipt) or prev.position != receipt.position - 1:
        found = f"#{prev.position}" if isinstance(prev, Receipt) else "not a receipt"
        raise invalid(f"broken chain: stream seq {seq - 1} should hold receipt #{receipt.position - 1}, holds {found}")
    if receipt_hash(prev) != prev.receipt_hash:
        raise invalid(f"broken chain: the previous receipt #{prev.position} does not match its own hash")
    if receipt.prev_hash != prev.receipt_hash:
        raise invalid(
            f"broken chain at position {receipt.position}: prev_hash {receipt.prev_hash} "
            f"!= receipt #{prev.position}'s hash {prev.receipt_hash}"
        )
    return f"ok · prev_hash matches receipt #{prev.position} ({prev.intent_id})"


async def verify_stored(cfg: WritSettings, intent_id: str, given_key: tuple[str, str] | None = None) -> Verified:
    """Verify the stored receipt of ``intent_id``: hash, signature, link to the previous receipt."""
    check_intent_id(intent_id)
    async with connect(cfg) as nc:
        receipt, seq = await fetch_stored(nc, intent_id)
        public_key, source = given_key or await plane_or_local_key(nc, cfg)
        check_signed(receipt, public_key)
        chain = await check_chain(nc, receipt, seq)
    return Verified(receipt, source, chain)


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail("file_unreadable", f"cannot read {path}: {exc.strerror or exc}")


async def verify_file(cfg: WritSettings, data: bytes, name: str, given_key: tuple[str, str] | None = None) -> Verified:
    """Verify a receipt file's bytes offline (no chain check: the previous receipt is not in the file)."""
    receipt = parse_receipt_file(data, name)
    found = given_key or key_from_data_dir(cfg)
    if found is None:
        try:
            async with connect(cfg) as nc:
                found = await key_from_plane(nc)
        except CliError as exc:
            raise CliError(
                "no_public_key",
                "no ledger public key: pass --public-key B64 or --public-key-file PATH "
                "(or point WRIT_DATA_DIR at the plane's data dir, which holds ledger/ledger.pub)",
            ) from exc
    public_key, source = found
    check_signed(receipt, public_key)
    expected = canonical_json(receipt)
    if data not in (expected, expected.rstrip(b"\n"), msgspec.json.encode(receipt)):
        first = next(
            (i for i, (a, b) in enumerate(zip(data, expected, strict=False)) if a != b), min(len(data), len(expected))
        )
        raise invalid(
            f"{name} is not byte for byte what `writ receipt show --json` wrote (first difference at byte {first}); "
            "a receipt file must not be edited"
        )
    return Verified(receipt, source, "not checked offline (the previous receipt is not in the file)")


# -- commands ---------------------------------------------------------------------------------------


def print_verified(verified: Verified) -> None:
    r = verified.receipt
    console.print("[bold green]valid[/]")
    console.print(f"  receipt    #{r.position} · {r.intent_id} · {r.status}")
    console.print(f"  hash       ok · {r.receipt_hash}")
    console.print(f"  signature  ok · ledger key {r.ledger_key_id} (from {verified.key_source})")
    console.print(f"  chain      {verified.chain}")


async def _show(intent_id: str) -> Receipt:
    check_intent_id(intent_id)
    async with connect(settings()) as nc:
        receipt, _seq = await fetch_stored(nc, intent_id)
    return receipt


@receipt_app.command("show")
def receipt_show(
    intent_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: Annotated[
        bool, typer.Option("--json", help="The receipt as JSON, for `writ receipt verify --file`")
    ] = False,
) -> None:
    """The signed receipt of an intent."""
    receipt = run(_show(intent_id))
    if as_json:
        sys.stdout.write(canonical_json(receipt).decode())
        sys.stdout.flush()
    else:
        console.print(render.receipt_panel(receipt))


async def _verify(intent_id: str | None, file: tuple[bytes, str] | None, given: tuple[str, str] | None) -> Verified:
    cfg = settings()
    if file is not None:
        return await verify_file(cfg, *file, given)
    assert intent_id is not None
    return await verify_stored(cfg, intent_id, given)


def _inputs(
    intent_id: str | None, file: Path | None, public_key: str | None, key_file: Path | None
) -> tuple[tuple[bytes, str] | None, tuple[str, str] | None]:
    if (intent_id is None) == (file is None):
        fail("invalid_option", "give an intent ID (verify the stored receipt) or --file PATH (verify offline)")
    return (read_file(file), str(file)) if file else None, key_from_options(public_key, key_file)


@receipt_app.command("verify")
def receipt_verify(
    intent_id: Annotated[str | None, typer.Argument(metavar="[ID]", help="Verify this intent's stored receipt")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="Verify a receipt JSON file offline")] = None,
    public_key: Annotated[str | None, typer.Option(help="The ledger's public key (base64)")] = None,
    public_key_file: Annotated[Path | None, typer.Option(help="A file holding the ledger's public key")] = None,
) -> None:
    """Check a receipt's hash, the ledger's signature, and (from the ledger) its link to the previous one."""
    contents, given = report(lambda: _inputs(intent_id, file, public_key, public_key_file))
    print_verified(run(_verify(intent_id, contents, given)))
