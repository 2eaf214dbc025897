"""Executor service wiring: consumes intent.authorized and makes the one call with outside effects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg

from writ_common import events as ev
from writ_common import subjects
from writ_common.bus import StaleAppend, read_history
from writ_common.catalog import Catalog
from writ_common.control import ControlFollower
from writ_common.envelope import StoredEvent
from writ_common.fold import IntentView, fold_intent
from writ_common.service import FENCE_RETRIES, Service, expired_or_none
from writ_common.settings import WritSettings
from writ_executor.domain import Invoke, idempotency_key, next_step, outcome
from writ_executor.sessions import ServerUnavailable, SessionPool

log = logging.getLogger(__name__)

ACK_WAIT = 30.0


def build(settings: WritSettings) -> Service:
    svc = Service("executor", settings)
    catalog = Catalog()
    pool = SessionPool()
    follower: ControlFollower | None = None

    async def startup() -> None:
        nonlocal follower
        follower = ControlFollower(svc.js, subjects.REGISTRY_STREAM, catalog.apply)
        await follower.start()

    async def server_for(name: str) -> ev.ServerRegistered | None:
        if name not in catalog.servers and follower is not None:
            await follower.ensure_fresh()
        return catalog.servers.get(name)

    async def invoke(view: IntentView, attempt: int, raw: Msg) -> ev.Payload:
        planned, intent = view.planned, view.submitted
        assert planned is not None and intent is not None
        server = await server_for(planned.server)
        if server is None:
            return ev.ExecutionFailed(
                attempt=attempt,
                retryable=False,
                code="unknown_server",
                reason=f"unknown_server: {planned.server!r} is not registered",
            )
        timeout = settings.tool_timeout
        if (deadline := view.deadline) is not None:
            timeout = min(timeout, max(0.001, (deadline - datetime.now(UTC)).total_seconds()))
        meta = {"writ/idempotency_key": idempotency_key(view), "writ/attempt": attempt}
        heartbeat = asyncio.create_task(keep_alive(raw))
        started = time.perf_counter()
        try:
            result = await pool.call(server, planned.tool, intent.arguments, meta=meta, timeout=timeout)
        except TimeoutError:
            if planned.annotations.idempotent:
                return ev.ExecutionFailed(
                    attempt=attempt, retryable=True, code="timeout", reason=f"timeout: no answer within {timeout:.1f}s"
                )
            return ev.ExecutionOutcomeUnknown(
                attempt=attempt,
                reason=f"outcome_unknown: no answer within {timeout:.1f}s; the call may have taken effect",
            )
        except ServerUnavailable as exc:
            return ev.ExecutionFailed(
                attempt=attempt, retryable=True, code="server_unavailable", reason=f"server_unavailable: {exc}"
            )
        except Exception as exc:
            return ev.ExecutionFailed(
                attempt=attempt, retryable=False, code="mcp_error", reason=f"mcp_error: {type(exc).__name__}: {exc}"
            )
        finally:
            heartbeat.cancel()
        elapsed = (time.perf_counter() - started) * 1000
        dumped: dict[str, Any] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        return outcome(attempt, dumped, bool(result.is_error), elapsed)

    async def on_authorized(trigger: StoredEvent, raw: Msg) -> None:
        for _ in range(FENCE_RETRIES):
            history = await read_history(svc.nc, trigger.envelope.agent_id or "", trigger.envelope.intent_id or "")
            view = fold_intent(history.events)
            expired = expired_or_none(view, "execute")
            step = expired[0] if expired else next_step(view)
            if step is None:
                return
            try:
                if not isinstance(step, Invoke):
                    await svc.append_all(view, trigger, [step], history.last_seq, attempt=view.last_attempt)
                    return
                assert view.planned is not None
                started = ev.ExecutionStarted(
                    attempt=step.attempt,
                    idempotency_key=idempotency_key(view),
                    server=view.planned.server,
                    tool=view.planned.tool,
                )
                # Recorded before the call: a crash after this point is seen on redelivery.
                [started_seq] = await svc.append_all(view, trigger, [started], history.last_seq, attempt=step.attempt)
            except StaleAppend:
                continue
            result = await invoke(view, step.attempt, raw)
            try:
                await svc.append_all(view, trigger, [result], started_seq, attempt=step.attempt)
            except StaleAppend:
                log.warning("%s: intent ended elsewhere while attempt %d ran", view.intent_id, step.attempt)
            return
        raise RuntimeError(f"{trigger.envelope.intent_id}: gave up after {FENCE_RETRIES} stale appends")

    async def ping(_body: dict[str, Any]) -> Any:
        return {"service": svc.name, "servers": len(catalog.servers), "dead_letters": svc.dead_letters}

    svc.on_startup(startup)
    svc.on_shutdown(pool.close)
    # One call at a time per replica; ack_wait is extended by in_progress() while a call runs.
    svc.consume_intents(
        subjects.intents_of_type("intent.authorized"),
        on_authorized,
        ack_wait=ACK_WAIT,
        batch_size=1,
        max_ack_pending=64,
    )
    svc.command("ping", ping)
    return svc


async def keep_alive(raw: Msg) -> None:
    """Tell JetStream we are still working on ``raw`` so it is not redelivered mid-call."""
    while True:
        await asyncio.sleep(ACK_WAIT / 3)
        with contextlib.suppress(Exception):
            await raw.in_progress()
