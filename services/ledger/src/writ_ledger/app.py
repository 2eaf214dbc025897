"""Ledger service wiring: projects every intent event and records one signed receipt per terminal intent."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import APIError

from writ_common import events as ev
from writ_common import subjects
from writ_common.bus import WRONG_LAST_SEQUENCE, direct_get_batch, last_on_subject, read_history, stored
from writ_common.commands import CommandError
from writ_common.envelope import StoredEvent, UndecodableEvent, decode, encode, make_envelope, utcnow
from writ_common.fold import fold_intent
from writ_common.receipts import GENESIS, build_receipt
from writ_common.service import FENCE_RETRIES, Service
from writ_common.settings import WritSettings
from writ_common.signing import key_id, load_or_create_key, public_key_b64
from writ_ledger.projection import Projection

log = logging.getLogger(__name__)


class IntentQuery(msgspec.Struct, kw_only=True):
    intent_id: str


class ListQuery(msgspec.Struct, kw_only=True):
    status: str | None = None
    limit: int = 50


def build(settings: WritSettings) -> Service:
    svc = Service("ledger", settings)
    home = settings.service_dir("ledger")
    key = load_or_create_key(home / "ledger.ed25519")
    public_key = public_key_b64(key)
    (home / "ledger.pub").write_text(public_key + "\n")
    ledger_key_id = key_id(public_key)
    views = Projection(home / "views.sqlite3")

    head: list[tuple[int, str, int]] = []  # the chain head as this replica last wrote or read it

    async def chain_head() -> tuple[int, str, int]:
        """(position, receipt_hash, stream seq) of the last receipt; the chain's one fence.

        Kept in memory after the first read and each append; the fence tells us when another
        replica moved it, and then it is read again.
        """
        if head:
            return head[0]
        state = (await svc.js.stream_info(subjects.LEDGER_STREAM)).state
        if not state.last_seq:
            head[:] = [(0, GENESIS, 0)]
            return head[0]
        raw = await svc.js.get_msg(subjects.LEDGER_STREAM, state.last_seq, direct=True)
        last = decode(raw.data or b"", seq=state.last_seq).payload
        assert isinstance(last, ev.Receipt)
        head[:] = [(last.position, last.receipt_hash, state.last_seq)]
        return head[0]

    async def record(trigger: StoredEvent) -> None:
        intent_id = trigger.envelope.intent_id or ""
        for _ in range(FENCE_RETRIES):
            if await last_on_subject(svc.js, subjects.LEDGER_STREAM, subjects.receipt_subject(intent_id)):
                return  # exactly one receipt per intent
            history = await read_history(svc.nc, trigger.envelope.agent_id or "", intent_id)
            view = fold_intent(history.events)
            if view.terminal is None or view.submitted is None:
                return  # a terminal event without its intent: nothing to vouch for
            position, prev_hash, head_seq = await chain_head()
            receipt = build_receipt(
                view,
                position=position + 1,
                prev_hash=prev_hash,
                recorded_at=utcnow(),
                key=key,
                ledger_key_id=ledger_key_id,
            )
            envelope = make_envelope(
                receipt,
                producer=svc.producer,
                intent_id=intent_id,
                agent_id=view.agent_id,
                causation_id=view.terminal.envelope.id,
                correlation_id=view.submitted_event.envelope.id if view.submitted_event else None,
            )
            headers = {"Nats-Msg-Id": f"receipt:{intent_id}", "Nats-Expected-Last-Sequence": str(head_seq)}
            try:
                ack = await svc.js.publish(subjects.receipt_subject(intent_id), encode(envelope), headers=headers)
            except APIError as exc:
                head.clear()
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    continue  # another ledger replica extended the chain: re-read the head
                raise
            # A duplicate ack names the earlier message, not a new head: read it again next time.
            head[:] = [] if ack.duplicate else [(receipt.position, receipt.receipt_hash, ack.seq)]
            svc.fault_point()
            return
        raise RuntimeError(f"{intent_id}: could not extend the receipt chain after {FENCE_RETRIES} tries")

    async def on_event(event: StoredEvent, _raw: Msg) -> None:
        # The view is applied strictly in stream order, whatever order redeliveries come in.
        if event.seq == views.position() + 1:
            views.apply(event.seq, event)
        elif event.seq > views.position():
            await catch_up()
        if event.type in ev.TERMINAL_TYPES:
            await record(event)

    async def intent_status(body: dict[str, Any]) -> Any:
        query = msgspec.convert(body, IntentQuery)
        row = views.intent(query.intent_id)
        if row is None:
            raise CommandError("not_found", f"no intent {query.intent_id!r} in the ledger's view")
        return row

    async def list_intents(body: dict[str, Any]) -> Any:
        query = msgspec.convert(body, ListQuery)
        return views.intents(status=query.status, limit=max(1, min(query.limit, 1000)))

    async def get_public_key(_body: dict[str, Any]) -> Any:
        return {"public_key": public_key, "key_id": ledger_key_id}

    async def ping(_body: dict[str, Any]) -> Any:
        return {"service": svc.name, "applied_seq": views.position(), "dead_letters": svc.dead_letters}

    async def views_digest(_body: dict[str, Any]) -> Any:
        return {"digest": views.digest(), "applied_seq": views.position()}

    async def catch_up() -> None:
        """Rebuild the view from the log where it is behind (a deleted or older views file):
        the durable consumer only brings what it has not acked yet."""
        msgs = await direct_get_batch(
            svc.nc, subjects.INTENTS_STREAM, "writ.intent.>", start_seq=views.position() + 1, batch=1024
        )
        for msg in msgs:
            try:
                event: StoredEvent | None = stored(msg)
            except UndecodableEvent:
                event = None  # dead-lettered by the consumer; the view only moves past it
            views.apply(int((msg.headers or {})["Nats-Sequence"]), event)
        if msgs:
            log.info("ledger: view caught up over %d events to seq %d", len(msgs), views.position())

    async def shutdown() -> None:
        views.close()

    svc.on_startup(catch_up)
    svc.on_shutdown(shutdown)
    # One writer extends the chain, in log order: a single sequential consumer.
    svc.consume_intents("writ.intent.>", on_event, batch_size=64, max_ack_pending=512)
    svc.command("intent_status", intent_status)
    svc.command("list_intents", list_intents)
    svc.command("public_key", get_public_key)
    svc.command("views_digest", views_digest)
    svc.command("ping", ping)
    return svc
