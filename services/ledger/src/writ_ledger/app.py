"""Ledger service wiring: records one signed receipt per terminal intent (``writer.py``), keeps
the views (the log projected into SQLite) and serves them over NATS commands and the views HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec
from nats.aio.msg import Msg

from writ_common import subjects
from writ_common.commands import CommandError, refuse_if
from writ_common.envelope import StoredEvent, utcnow
from writ_common.ledger_head import sign_head
from writ_common.service import Service
from writ_common.settings import WritSettings
from writ_common.signing import load_or_create_key, public_key_b64
from writ_ledger import domain
from writ_ledger.histories import IntentHistories
from writ_ledger.views import queries
from writ_ledger.views.runner import Views
from writ_ledger.writer import ReceiptWriter

log = logging.getLogger(__name__)

T = TypeVar("T")


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


async def answered(query: Awaitable[T]) -> T:
    """A views query's answer; its expected refusal (``QueryError``) as the command's error."""
    try:
        return await query
    except queries.QueryError as exc:
        raise CommandError(exc.code, exc.message) from exc


class Ledger:
    """The ledger's state and handlers: the receipt writer, the views it keeps in step with the
    intents stream, the commands that read them and the HTTP API serving them."""

    def __init__(self, svc: Service, settings: WritSettings) -> None:
        self.svc = svc
        self.settings = settings
        home = settings.service_dir("ledger")
        key = load_or_create_key(home / "ledger.ed25519")
        (home / "ledger.pub").write_text(public_key_b64(key) + "\n")
        # Every intent event the views apply, in order: a receipt is built from these when they hold
        # the whole intent (its submitted event on), instead of reading the history back.
        self.histories = IntentHistories()
        self.views = Views(settings.views_file or home / "views.sqlite3", self.applied)
        self.writer = ReceiptWriter(svc, key, self.histories, self.views)
        self.api = contextlib.AsyncExitStack()  # the views API, the console and what they hold

    def applied(self, stream: str, seq: int, event: StoredEvent | None) -> None:
        """The views applied ``seq`` of ``stream``: intent events feed the histories."""
        if stream == subjects.INTENTS_STREAM:
            self.histories.feed(seq, event)

    async def on_batch(self, events: list[StoredEvent]) -> None:
        """A pulled batch, before its events are handled: the views apply it in one transaction
        (each event's own ``apply_live`` is then a no-op)."""
        await self.views.apply_live_batch(subjects.INTENTS_STREAM, events)

    async def on_event(self, event: StoredEvent, _raw: Msg) -> None:
        # The views are applied strictly in stream order, whatever order redeliveries come in.
        # They are derived and catch up from their own position, so a views failure is logged
        # and left to the poller: it must not hold back the receipt, which is the promise.
        try:
            await self.views.apply_live(subjects.INTENTS_STREAM, event)
        except Exception:
            log.exception("ledger: views could not apply %s; they catch up from the log later", event.subject)
        if domain.earns_receipt(event.type):
            await self.writer.record(event)

    # -- commands -------------------------------------------------------------------------------

    async def one_intent(self, intent_id: str, *streams: str) -> dict[str, Any] | None:
        """An intent as the log has it when asked: the views first read ``streams`` up to their
        heads, so whoever just approved, denied or reconciled sees that, not a projection a beat
        behind."""
        for stream in streams:
            await self.views.catch_up(stream)
        found: dict[str, Any] | None = await answered(self.views.read(queries.get_intent, intent_id))
        return found

    async def intent_status(self, body: dict[str, Any]) -> Any:
        query = msgspec.convert(body, IntentQuery)
        found = await self.one_intent(query.intent_id, subjects.INTENTS_STREAM)  # the intents row only
        if found is None:
            raise CommandError.of(domain.not_found(query.intent_id, "the ledger's view"))
        return found["intent"]

    async def views_intent(self, body: dict[str, Any]) -> Any:
        query = msgspec.convert(body, IntentQuery)
        found = await self.one_intent(query.intent_id, subjects.INTENTS_STREAM, subjects.LEDGER_STREAM)  # and receipt
        if found is None:
            raise CommandError.of(domain.not_found(query.intent_id, "the views"))
        return found

    async def views_intents(self, body: dict[str, Any]) -> Any:
        where, page = msgspec.convert(body, queries.IntentFilter), msgspec.convert(body, Page)
        return await answered(self.views.read(queries.list_intents, where, limit=page.limit, cursor=page.cursor))

    async def list_intents(self, body: dict[str, Any]) -> Any:
        return (await self.views_intents(body))["intents"]

    async def views_stats(self, body: dict[str, Any]) -> Any:
        q = msgspec.convert(body, StatsQuery)
        refuse_if(domain.stats_by(q.by))
        return {"by": q.by, "rows": await answered(self.views.read(queries.stats, q.by, since=q.since, until=q.until))}

    async def views_shadow(self, body: dict[str, Any]) -> Any:
        q = msgspec.convert(body, ShadowQuery)
        await self.views.catch_up(subjects.INTENTS_STREAM)
        return await answered(self.views.read(queries.shadow, digest=q.digest, since=q.since, limit=q.limit))

    async def views_rollouts(self, body: dict[str, Any]) -> Any:
        q = msgspec.convert(body, RolloutsQuery)
        await self.views.catch_up(subjects.POLICY_STREAM)
        return await answered(self.views.read(queries.rollouts, limit=q.limit))

    async def views_sql(self, body: dict[str, Any]) -> Any:
        q = msgspec.convert(body, SqlQuery)
        rows = domain.sql_rows(q.max_rows, queries.SQL_MAX_ROWS)
        self.views.commit()  # the file is read by another connection: it sees what was applied
        return await answered(asyncio.to_thread(queries.run_sql, self.views.path, q.sql, max_rows=rows))

    async def views_status(self, _body: dict[str, Any]) -> Any:
        lags = [lag.as_dict() for lag in await self.views.lag()]
        port = self.settings.views_port
        return {"streams": lags, "file": str(self.views.path), "api": f"http://127.0.0.1:{port}" if port else None}

    async def views_rebuild(self, _body: dict[str, Any]) -> Any:
        return await answered(self.views.rebuild())

    async def views_digest(self, _body: dict[str, Any]) -> Any:
        return await self.views.snapshot()

    async def get_public_key(self, _body: dict[str, Any]) -> Any:
        return {"public_key": self.writer.public_key, "key_id": self.writer.key_id}

    async def get_signed_head(self, _body: dict[str, Any]) -> Any:
        """The chain's head read afresh from the stream, signed: an export ends exactly there."""
        head = await self.writer.read_head()
        signed = sign_head(
            self.writer.key,
            position=head.position,
            receipt_hash=head.receipt_hash,
            signed_at=utcnow(),
            ledger_key_id=self.writer.key_id,
        )
        return msgspec.to_builtins(signed)

    async def ping(self, _body: dict[str, Any]) -> Any:
        return {
            "service": self.svc.name,
            "applied_seq": self.views.store.position(subjects.INTENTS_STREAM),
            "dead_letters": self.svc.dead_letters,
        }

    # -- lifecycle ------------------------------------------------------------------------------

    async def start_views(self) -> None:
        await self.views.start(self.svc.nc)
        if self.settings.views_port:
            await self.serve_api(self.settings.views_port)

    async def serve_api(self, port: int) -> None:
        """The views API, with the approvals API and the console on its port: one origin for the page."""
        from writ_common.approvals_api import ApprovalsPlane
        from writ_ledger.plane import PlaneReader
        from writ_ledger.views.api import serving

        settings = self.settings
        approvals = ApprovalsPlane(self.svc.nc)
        await approvals.start()
        self.api.push_async_callback(approvals.stop)
        plane = PlaneReader(self.svc.nc, settings)
        await plane.start()
        self.api.push_async_callback(plane.stop)
        await self.api.enter_async_context(
            serving(
                self.views,
                port,
                settings.http_host,
                ledger_public_key=self.writer.public_key,
                approvals=approvals,
                plane=plane,
                extra_hosts=tuple(settings.console_hosts.split(",")),
            )
        )
        log.info("ledger: views API and console on http://%s:%d/console/", settings.http_host, port)

    async def shutdown(self) -> None:
        await self.api.aclose()
        await self.views.stop()

    def wire(self) -> None:
        """Every subscription, command and background task of the ledger, in one place."""
        self.svc.on_startup(self.start_views)
        self.svc.on_shutdown(self.shutdown)
        # One writer extends the chain, in log order: a single sequential consumer.
        self.svc.consume_intents(
            "writ.intent.>",
            self.on_event,
            batch_size=64,
            max_ack_pending=512,
            concurrency=1,
            on_batch=self.on_batch,
        )
        self.svc.command("intent_status", self.intent_status)
        self.svc.command("list_intents", self.list_intents)
        self.svc.command("public_key", self.get_public_key)
        self.svc.command("signed_head", self.get_signed_head)
        self.svc.command("views_digest", self.views_digest)
        self.svc.command("views_intents", self.views_intents)
        self.svc.command("views_intent", self.views_intent)
        self.svc.command("views_stats", self.views_stats)
        self.svc.command("views_sql", self.views_sql)
        self.svc.command("views_shadow", self.views_shadow)
        self.svc.command("views_rollouts", self.views_rollouts)
        self.svc.command("views_status", self.views_status)
        self.svc.command("views_rebuild", self.views_rebuild)
        self.svc.command("ping", self.ping)


def build(settings: WritSettings) -> Service:
    svc = Service("ledger", settings)
    Ledger(svc, settings).wire()
    return svc
