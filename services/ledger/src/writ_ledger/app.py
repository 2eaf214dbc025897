"""Ledger service wiring: records one signed receipt per terminal intent, keeps the views (the log
projected into SQLite) and serves them over NATS commands and the views HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import APIError, NotFoundError

from writ_common import events as ev
from writ_common import subjects, topology
from writ_common.bus import WRONG_LAST_SEQUENCE, last_on_subject
from writ_common.commands import CommandError
from writ_common.envelope import StoredEvent, UndecodableEvent, decode, encode, make_envelope, utcnow
from writ_common.fold import fold_intent
from writ_common.ledger_head import sign_head
from writ_common.receipts import GENESIS, ReceiptInvalid, build_receipt, verify_receipt
from writ_common.service import FENCE_RETRIES, Service
from writ_common.settings import WritSettings
from writ_common.signing import key_id, load_or_create_key, public_key_b64
from writ_ledger.histories import IntentHistories
from writ_ledger.views import queries
from writ_ledger.views.runner import Views

log = logging.getLogger(__name__)


class IntentQuery(msgspec.Struct, kw_only=True):
    intent_id: str


class Page(msgspec.Struct, kw_only=True):
    """Which page of a list (the filters are a ``queries.IntentFilter`` read from the same body)."""

    limit: int = 50
    cursor: str | None = None


class StatsQuery(msgspec.Struct, kw_only=True):
    by: str = "agent"
    since: str | None = None
    until: str | None = None


class ShadowQuery(msgspec.Struct, kw_only=True):
    digest: str | None = None
    since: str | None = None
    limit: int = 50


class RolloutsQuery(msgspec.Struct, kw_only=True):
    limit: int = 20


class SqlQuery(msgspec.Struct, kw_only=True):
    sql: str
    max_rows: int = queries.SQL_MAX_ROWS


def build(settings: WritSettings) -> Service:
    svc = Service("ledger", settings)
    home = settings.service_dir("ledger")
    key = load_or_create_key(home / "ledger.ed25519")
    public_key = public_key_b64(key)
    (home / "ledger.pub").write_text(public_key + "\n")
    ledger_key_id = key_id(public_key)
    # Every intent event the views apply, in order: a receipt is built from these when they hold
    # the whole intent (its submitted event on), instead of reading the history back.
    histories = IntentHistories()

    def applied(stream: str, seq: int, event: StoredEvent | None) -> None:
        if stream == subjects.INTENTS_STREAM:
            histories.feed(seq, event)

    views = Views(settings.views_file or home / "views.sqlite3", applied)

    head: list[tuple[int, str, int]] = []  # the chain head as this replica last wrote or read it

    async def chain_head() -> tuple[int, str, int]:
        """(position, receipt_hash, stream seq) of the last receipt; the chain's one fence.

        Kept in memory after the first read and each append; the fence tells us when another
        replica moved it, and then it is read again.
        """
        if head:
            return head[0]
        state = (await svc.js.stream_info(subjects.LEDGER_STREAM)).state
        head[:] = [(*await last_own_receipt(state.last_seq), state.last_seq)]
        return head[0]

    def own_receipt(data: bytes) -> ev.Receipt:
        """``data`` as one of this ledger's receipts: decoded, hashed and signed with its key.

        Raises:
            UndecodableEvent: not a Writ event.
            ReceiptInvalid: not a receipt, or not this ledger's.
        """
        receipt = decode(data).payload
        if not isinstance(receipt, ev.Receipt):
            raise ReceiptInvalid(f"a {type(receipt).__name__}, not a receipt")
        verify_receipt(receipt, public_key)
        return receipt

    async def last_own_receipt(last_seq: int) -> tuple[int, str]:
        """(position, receipt_hash) of the newest message on the ledger stream that is a receipt
        signed by this ledger's key. Anything else there (a forged or foreign message) is logged
        and passed over, never chained from: it cannot halt the ledger or join the chain."""
        seq = last_seq
        while seq > 0:
            try:
                raw = await svc.js.get_msg(subjects.LEDGER_STREAM, seq, direct=True)
                receipt = own_receipt(raw.data or b"")
                return receipt.position, receipt.receipt_hash
            except NotFoundError:
                pass  # deleted: look further back
            except (UndecodableEvent, ReceiptInvalid) as exc:
                log.error(
                    "ledger: message %d on %s is not one of our receipts (%s); not chaining from it",
                    seq,
                    subjects.LEDGER_STREAM,
                    exc,
                )
            seq -= 1
        return 0, GENESIS

    async def has_own_receipt(agent_id: str, intent_id: str) -> bool:
        """A receipt of ours is stored for the intent (a foreign message on its subject is not one)."""
        raw = await last_on_subject(svc.js, subjects.LEDGER_STREAM, subjects.receipt_subject(agent_id, intent_id))
        if raw is None:
            return False
        try:
            own_receipt(raw.data or b"")
            return True
        except (UndecodableEvent, ReceiptInvalid):
            pass
        log.error("ledger: the message on the receipt subject of %s is not one of our receipts", intent_id)
        return False

    async def record(trigger: StoredEvent) -> None:
        intent_id, agent_id = trigger.envelope.intent_id or "", trigger.envelope.agent_id or ""
        for _ in range(FENCE_RETRIES):
            if await has_own_receipt(agent_id, intent_id):
                return  # exactly one receipt per intent
            events = histories.history(trigger)
            if events is None:  # not all known here: read the log (reaches the trigger, or redelivers)
                events = (await svc.history(trigger)).events
            view = fold_intent(events)
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
                ack_subject = subjects.receipt_subject(agent_id, intent_id)
                ack = await svc.js.publish(ack_subject, encode(envelope), headers=headers)
            except APIError as exc:
                head.clear()
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    continue  # another ledger replica extended the chain: re-read the head
                raise
            # A duplicate ack names the earlier message, not a new head: read it again next time.
            head[:] = [] if ack.duplicate else [(receipt.position, receipt.receipt_hash, ack.seq)]
            histories.forget(trigger)
            await svc.nc.publish(subjects.receipt_notice_subject(view.agent_id or "", intent_id), b"")
            svc.fault_point()
            if not ack.duplicate:
                await apply_own(decode(encode(envelope), seq=ack.seq, subject=ack_subject))
            return
        raise RuntimeError(f"{intent_id}: could not extend the receipt chain after {FENCE_RETRIES} tries")

    async def apply_own(receipt: StoredEvent) -> None:
        """Our receipt, into the views at once: the views do not read back what this ledger wrote
        (another replica's receipts come with the views' poll)."""
        try:
            topology.admit(receipt)
            await views.apply_live(subjects.LEDGER_STREAM, receipt)
        except Exception:
            log.exception("ledger: views could not apply receipt %d; they catch up from the log later", receipt.seq)

    async def on_event(event: StoredEvent, _raw: Msg) -> None:
        # The views are applied strictly in stream order, whatever order redeliveries come in.
        # They are derived and catch up from their own position, so a views failure is logged
        # and left to the poller: it must not hold back the receipt, which is the promise.
        try:
            await views.apply_live(subjects.INTENTS_STREAM, event)
        except Exception:
            log.exception("ledger: views could not apply %s; they catch up from the log later", event.subject)
        if event.type in ev.TERMINAL_TYPES:
            await record(event)

    async def read(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await views.read(fn, *args, **kwargs)
        except queries.QueryError as exc:
            raise CommandError(exc.code, exc.message) from exc

    async def one_intent(intent_id: str, *streams: str) -> dict[str, Any] | None:
        """An intent as the log has it when asked: the views first read ``streams`` up to their
        heads, so whoever just approved, denied or reconciled sees that, not a projection a beat
        behind."""
        for stream in streams:
            await views.catch_up(stream)
        found: dict[str, Any] | None = await read(queries.get_intent, intent_id)
        return found

    async def intent_status(body: dict[str, Any]) -> Any:
        query = msgspec.convert(body, IntentQuery)
        found = await one_intent(query.intent_id, subjects.INTENTS_STREAM)  # the intents row only
        if found is None:
            raise CommandError("not_found", f"no intent {query.intent_id!r} in the ledger's view")
        return found["intent"]

    async def views_intent(body: dict[str, Any]) -> Any:
        query = msgspec.convert(body, IntentQuery)
        found = await one_intent(query.intent_id, subjects.INTENTS_STREAM, subjects.LEDGER_STREAM)  # and receipt
        if found is None:
            raise CommandError("not_found", f"no intent {query.intent_id!r} in the views")
        return found

    async def views_intents(body: dict[str, Any]) -> Any:
        where, page = msgspec.convert(body, queries.IntentFilter), msgspec.convert(body, Page)
        return await read(queries.list_intents, where, limit=page.limit, cursor=page.cursor)

    async def list_intents(body: dict[str, Any]) -> Any:
        return (await views_intents(body))["intents"]

    async def views_stats(body: dict[str, Any]) -> Any:
        q = msgspec.convert(body, StatsQuery)
        if q.by not in ("agent", "tool", "hour"):
            raise CommandError("invalid_by", "by must be one of agent, tool, hour")
        return {"by": q.by, "rows": await read(queries.stats, q.by, since=q.since, until=q.until)}

    async def views_shadow(body: dict[str, Any]) -> Any:
        q = msgspec.convert(body, ShadowQuery)
        await views.catch_up(subjects.INTENTS_STREAM)
        return await read(queries.shadow, digest=q.digest, since=q.since, limit=q.limit)

    async def views_rollouts(body: dict[str, Any]) -> Any:
        q = msgspec.convert(body, RolloutsQuery)
        await views.catch_up(subjects.POLICY_STREAM)
        return await read(queries.rollouts, limit=q.limit)

    async def views_sql(body: dict[str, Any]) -> Any:
        q = msgspec.convert(body, SqlQuery)
        try:
            return await asyncio.to_thread(
                queries.run_sql, views.path, q.sql, max_rows=max(1, min(q.max_rows, queries.SQL_MAX_ROWS))
            )
        except queries.QueryError as exc:
            raise CommandError(exc.code, exc.message) from exc

    async def views_status(_body: dict[str, Any]) -> Any:
        lags = [lag.as_dict() for lag in await views.lag()]
        api = f"http://127.0.0.1:{settings.views_port}" if settings.views_port else None
        return {"streams": lags, "file": str(views.path), "api": api}

    async def views_rebuild(_body: dict[str, Any]) -> Any:
        try:
            return await views.rebuild()
        except queries.QueryError as exc:
            raise CommandError(exc.code, exc.message) from exc

    async def get_public_key(_body: dict[str, Any]) -> Any:
        return {"public_key": public_key, "key_id": ledger_key_id}

    async def get_signed_head(_body: dict[str, Any]) -> Any:
        """The chain's head read afresh from the stream, signed: an export ends exactly there."""
        state = (await svc.js.stream_info(subjects.LEDGER_STREAM)).state
        position, last_hash = await last_own_receipt(state.last_seq)
        signed = sign_head(
            key, position=position, receipt_hash=last_hash, signed_at=utcnow(), ledger_key_id=ledger_key_id
        )
        return msgspec.to_builtins(signed)

    async def ping(_body: dict[str, Any]) -> Any:
        return {
            "service": svc.name,
            "applied_seq": views.store.position(subjects.INTENTS_STREAM),
            "dead_letters": svc.dead_letters,
        }

    async def views_digest(_body: dict[str, Any]) -> Any:
        return await views.snapshot()

    api = contextlib.AsyncExitStack()

    async def start_views() -> None:
        await views.start(svc.nc)
        if settings.views_port:
            from writ_common.approvals_api import ApprovalsPlane
            from writ_ledger.plane import PlaneReader
            from writ_ledger.views.api import serving

            # The approvals API and the console share the views API's port: one origin for the page.
            approvals = ApprovalsPlane(svc.nc)
            await approvals.start()
            api.push_async_callback(approvals.stop)
            plane = PlaneReader(svc.nc, settings)
            await plane.start()
            api.push_async_callback(plane.stop)
            await api.enter_async_context(
                serving(
                    views,
                    settings.views_port,
                    settings.http_host,
                    ledger_public_key=public_key,
                    approvals=approvals,
                    plane=plane,
                    extra_hosts=tuple(settings.console_hosts.split(",")),
                )
            )
            log.info("ledger: views API and console on http://%s:%d/console/", settings.http_host, settings.views_port)

    async def shutdown() -> None:
        await api.aclose()
        await views.stop()

    svc.on_startup(start_views)
    svc.on_shutdown(shutdown)
    # One writer extends the chain, in log order: a single sequential consumer.
    svc.consume_intents("writ.intent.>", on_event, batch_size=64, max_ack_pending=512, concurrency=1)
    svc.command("intent_status", intent_status)
    svc.command("list_intents", list_intents)
    svc.command("public_key", get_public_key)
    svc.command("signed_head", get_signed_head)
    svc.command("views_digest", views_digest)
    svc.command("views_intents", views_intents)
    svc.command("views_intent", views_intent)
    svc.command("views_stats", views_stats)
    svc.command("views_sql", views_sql)
    svc.command("views_shadow", views_shadow)
    svc.command("views_rollouts", views_rollouts)
    svc.command("views_status", views_status)
    svc.command("views_rebuild", views_rebuild)
    svc.command("ping", ping)
    return svc
