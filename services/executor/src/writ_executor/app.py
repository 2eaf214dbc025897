"""Executor service wiring: consumes intent.authorized and makes the one call with outside effects.

Order of a call: fold -> lease (Redis, fail closed) -> fold again -> append execution.started
(fenced) -> call under the lease, renewing it and the ack deadline -> append the outcome -> ack.
A crash anywhere is seen on redelivery by the fold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
import redis.asyncio as aioredis
from mcp.shared.exceptions import MCPError
from nats.aio.msg import Msg

from writ_common import commands, metrics, operations, subjects
from writ_common import events as ev
from writ_common.bus import AppendUnresolved, StaleAppend, read_history
from writ_common.catalog import Catalog
from writ_common.commands import CommandError, require_token
from writ_common.digest import within_canonical_domain
from writ_common.envelope import MAX_CONTENT_DEPTH, StoredEvent, nesting_depth_exceeds
from writ_common.fold import IntentView, fold_intent
from writ_common.intent_consumer import Redeliver
from writ_common.mcp_client import IDEMPOTENCY_META_KEY, discover, root_cause
from writ_common.service import FENCE_RETRIES, Service
from writ_common.settings import WritSettings
from writ_common.stranded import sweep_execution
from writ_executor.admission import Admission, Ticket
from writ_executor.breaker import CircuitBreaker, Transition
from writ_executor.domain import (
    CallError,
    Invoke,
    after_error,
    attempt_may_be_running,
    call_arguments,
    decide_execution,
    idempotency_key,
    needs_recheck,
    outcome,
    policy_changed,
    reconcile,
)
from writ_executor.lease import Leases, LeaseUnavailable
from writ_executor.redaction import MIN_SECRET_LENGTH, Redactor, references, resolve
from writ_executor.scrubbed_output import scrub_logs, scrubbed_pipe
from writ_executor.secret_store import SecretStore, SecretStoreError
from writ_executor.sessions import CallInterrupted, Relay, ServerUnavailable, SessionPool
from writ_executor.slots import ServerSlots
from writ_executor.tuning import CallBook, Limits, Tuning, apply_limit_event, next_change

log = logging.getLogger(__name__)


class Reconcile(msgspec.Struct, kw_only=True):
    intent_id: str
    agent_id: str
    outcome: Literal["succeeded", "failed", "retry"]
    by: str
    note: str = ""
    retry_intent_id: str | None = None


class SetSecret(msgspec.Struct, kw_only=True):
    name: str
    value: str
    by: str = ""


class DeleteSecret(msgspec.Struct, kw_only=True):
    name: str
    by: str = ""


class Discover(msgspec.Struct, kw_only=True):
    server: ev.ServerRegistered


class ListOffered(msgspec.Struct, kw_only=True):
    method: Literal["resources/list", "resources/templates/list", "prompts/list"]


LIST_TIMEOUT = 10.0  # seconds one server has to answer a listing for the gateway


DISCOVERY_TIMEOUT = 60.0
ACK_WAIT = 10.0  # extended every ACK_WAIT/3 while a call runs; also the lease's time to live
LEASE_BUSY_RETRY = 2.0
REFRESH_TIMEOUT = 75.0  # the registry allows discovery 60s
# How long a lost answer to execution.started is looked into before giving up (then the message
# is redelivered and the log decides). An outcome, once known, is held on to until recorded.
SETTLE_STARTED = 300.0
SETTLE_OUTCOME = 60.0
TUNE_TICK = 1.0  # seconds between two looks of the concurrency loop
SERVER_BUSY_RETRY = 0.2  # seconds before a call whose server is at its limit comes again


def build(settings: WritSettings) -> Service:
    svc = Service("executor", settings)
    catalog = Catalog()
    key = settings.secrets_key.get_secret_value() if settings.secrets_key else None
    store = SecretStore(settings.service_dir("executor") / "secrets", key)
    secrets = Secrets(store)
    refreshes: dict[str, asyncio.Task[None]] = {}
    stale: set[str] = set()  # told again while a refresh was running: refresh once more after

    def on_tools_changed(name: str) -> None:
        """A server sent notifications/tools/list_changed: the registry rediscovers its tools, so
        a changed definition becomes a new version in quarantine before anyone calls it."""
        if name in refreshes and not refreshes[name].done():
            stale.add(name)
            return
        refreshes[name] = asyncio.create_task(refresh_tools(name), name=f"refresh-{name}")

    async def refresh_tools(name: str) -> None:
        while True:
            stale.discard(name)
            try:
                reply = await commands.call(
                    svc.nc, "registry", "refresh_server", {"name": name}, timeout=REFRESH_TIMEOUT
                )
                log.warning(
                    "executor: %s says its tools changed; rediscovered, in quarantine: %s",
                    name,
                    ", ".join(reply.get("quarantined", [])) or "nothing",
                )
            except Exception as exc:
                log.warning("executor: %s says its tools changed, but the registry could not refresh: %s", name, exc)
            if name not in stale:
                return

    pool = SessionPool(stderr=lambda: scrubbed_pipe(secrets.latest), on_tools_changed=on_tools_changed)
    scrub_logs(secrets.scrub_text)
    breakers: dict[str, CircuitBreaker] = {}
    server_slots = ServerSlots(settings.executor_per_server)
    tuning = Tuning(
        floor=settings.executor_per_server,
        ceiling=max(settings.executor_per_server, settings.executor_per_server_max or 0),
        window_s=settings.tuning_window,
        verify_s=settings.tuning_window,
    )
    limits = Limits()  # folded from the limit events: the loop's changes, and the one awaiting its verdict
    calls = CallBook()

    def on_limit(event: StoredEvent) -> None:
        apply_limit_event(limits, event)
        server_slots.limits = {s: min(max(n, tuning.floor), tuning.ceiling) for s, n in limits.by_server.items()}

    limit_follower = svc.follow(subjects.EXECUTOR_STREAM, on_limit)

    async def tune_once() -> None:
        """One step of the executor's own loop: read the calls, ask the rule, append its change."""
        await limit_follower.ensure_fresh()
        now = datetime.now(UTC)
        change = next_change(limits, calls, tuning, now)
        calls.prune(now - timedelta(seconds=4 * tuning.window_s))
        if change is None:
            return
        event = subjects.limit_subject(change.server, ev.EVENT_TYPE[type(change)].rpartition("_")[2])
        log.warning("executor: %s: %s", ev.EVENT_TYPE[type(change)], change.reason)
        await svc.append_control(event, change, message_id=f"limit:{change.server}:after:{limits.seq}")
        await limit_follower.ensure_fresh()

    async def tune_loop() -> None:
        while True:
            await asyncio.sleep(TUNE_TICK)
            try:
                await tune_once()
            except Exception:
                log.exception("executor: the concurrency loop failed this tick; trying again")

    async def start_tuning() -> None:
        if tuning.enabled:
            tuning_tasks.append(asyncio.create_task(tune_loop(), name="concurrency-tuning"))

    async def stop_tuning() -> None:
        for task in tuning_tasks:
            task.cancel()

    tuning_tasks: list[asyncio.Task[None]] = []
    svc.on_startup(start_tuning)
    svc.on_shutdown(stop_tuning)
    admission = Admission(settings)  # adaptive limit per route; a first attempt past it: overloaded
    redis = aioredis.from_url(
        settings.resolved_redis_url(), **settings.redis_options(), socket_timeout=2.0, socket_connect_timeout=2.0
    )
    leases = Leases(redis, settings.instance, ttl_ms=int(ACK_WAIT * 1000))
    follower = svc.follow(subjects.REGISTRY_STREAM, catalog.apply)
    policy_digest: list[str] = []  # the bundle in force, as the policy stream last said

    def on_policy(event: StoredEvent) -> None:
        if isinstance(event.payload, ev.PolicyBundlePublished):
            policy_digest[:] = [event.payload.policy_digest]

    policy_follower = svc.follow(subjects.POLICY_STREAM, on_policy)

    async def refused_by_current_policy(view: IntentView) -> ev.ExecutionFailed | None:
        """A call authorized under an earlier bundle runs only if its permit still holds now;
        policy decides (it owns the rules), asked only when the bundle has changed."""
        await policy_follower.ensure_fresh()
        if not needs_recheck(view, policy_digest[0] if policy_digest else None):
            return None
        try:
            verdict = await commands.call(
                svc.nc, "policy", "recheck", {"agent_id": view.agent_id, "intent_id": view.intent_id}, timeout=10.0
            )
        except CommandError as exc:
            # Fail closed: not calling under a policy we could not consult; the message comes again.
            raise Redeliver(LEASE_BUSY_RETRY, f"policy could not recheck the call: {exc}") from exc
        return None if verdict.get("holds") else policy_changed(str(verdict.get("reason", "")))

    async def server_for(name: str) -> ev.ServerRegistered | None:
        if name not in catalog.servers:
            await follower.ensure_fresh()
        return catalog.servers.get(name)

    async def record_transition(server: str, transition: Transition | None) -> None:
        if transition is None:
            return
        metrics.BREAKER_STATE.labels(server).set(metrics.BREAKER_LEVEL[transition.to_state])
        metrics.BREAKER_TRANSITIONS.labels(server, transition.from_state, transition.to_state).inc()
        log.warning("breaker %s: %s -> %s (%s)", server, transition.from_state, transition.to_state, transition.reason)
        event = ev.BreakerTransitioned(
            server=server,
            from_state=transition.from_state,
            to_state=transition.to_state,
            reason=transition.reason,
            consecutive_failures=transition.consecutive_failures,
        )
        with contextlib.suppress(Exception):  # a lost transition record must not fail the call
            await svc.append_control(
                subjects.breaker_subject(server),
                event,
                message_id=f"breaker:{server}:{settings.instance}:{time.time_ns()}",
            )

    def relay_to(agent_id: str, intent_id: str, redactor: Redactor) -> Relay:
        """What the tool's server says during the call (progress, log messages), scrubbed of secret
        values, published for the agent that asked (core NATS, not recorded: a gateway waiting on
        the call hears it; nobody else may)."""

        async def relay(kind: str, params: dict[str, Any]) -> None:
            body = msgspec.json.encode(within_canonical_domain(redactor.value(params)))
            if len(body) <= settings.max_output_bytes:
                await svc.nc.publish(subjects.relay_notice_subject(agent_id, intent_id, kind), body)

        return relay

    async def invoke(view: IntentView, attempt: int, ticket: Ticket) -> ev.Payload:
        planned = view.planned
        assert planned is not None and view.intent_id
        server = await server_for(planned.server)
        if server is None:
            return ev.ExecutionFailed(
                attempt=attempt,
                retryable=False,
                code="unknown_server",
                reason=f"unknown_server: {planned.server!r} is not registered",
            )
        try:
            known = secrets.current()
        except SecretStoreError as exc:
            if references(server):
                return ev.ExecutionFailed(attempt=attempt, retryable=False, code="secrets_unavailable", reason=str(exc))
            known = {}
        redactor = secrets.redactor(known)
        resolved = resolve(server, known)
        if isinstance(resolved, str):
            return ev.ExecutionFailed(attempt=attempt, retryable=False, code="secret_missing", reason=resolved)
        breaker = breakers.setdefault(server.name, CircuitBreaker())
        allowed, transition = breaker.allow(time.monotonic())
        await record_transition(server.name, transition)
        if not allowed:
            wait = breaker.retry_in(time.monotonic())
            fast = CallError(
                "not_sent", "circuit_open", f"{server.name!r} is failing; breaker open for {wait:.1f}s more"
            )
            return after_error(view, attempt, fast, now=datetime.now(UTC), max_attempts=settings.max_attempts)
        timeout = settings.tool_timeout
        if (deadline := view.deadline) is not None:
            timeout = min(timeout, max(0.001, (deadline - datetime.now(UTC)).total_seconds()))
        meta = {IDEMPOTENCY_META_KEY: idempotency_key(view), "writ/attempt": attempt}
        started = time.perf_counter()
        error: CallError | None = None
        operation = view.submitted.operation if view.submitted else operations.CALL_TOOL
        try:
            try:
                if operation == operations.CALL_TOOL:
                    relay = relay_to(view.agent_id or "", view.intent_id, redactor)
                    called = await pool.call(
                        resolved,
                        planned.tool,
                        call_arguments(view),
                        meta=meta,
                        timeout=timeout,
                        relay=relay,
                        on_session=ticket.sent,
                    )
                    answered, is_error = (
                        called.model_dump(mode="json", by_alias=True, exclude_none=True),
                        bool(called.is_error),
                    )
                else:
                    method = operations.OPERATIONS[operation].method
                    params = operations.request_params(
                        operation, planned.tool, view.submitted.arguments if view.submitted else {}
                    )
                    answered = await pool.request(
                        resolved, method, params, meta=meta, timeout=timeout, on_session=ticket.sent
                    )
                    is_error = False
            finally:
                ticket.received()  # the route's latency signal: the call itself, not a session's start
            calls.record_call(server.name, datetime.now(UTC), time.perf_counter() - started)
        except ServerUnavailable as exc:
            error = CallError("not_sent", "server_unavailable", redactor.text(str(exc)))
        except CallInterrupted as exc:
            error = CallError("interrupted", "call_interrupted", redactor.text(str(exc)))
        except MCPError as exc:
            refusal = within_canonical_domain(redactor.value(exc.error.model_dump(mode="json", exclude_none=True)))
            encoded = msgspec.json.encode(refusal)
            if len(encoded) > settings.max_output_bytes or nesting_depth_exceeds(encoded, MAX_CONTENT_DEPTH - 4):
                refusal.pop("data", None)  # the code and message are what a caller needs; the rest would not fit
            error = CallError(
                "refused", "mcp_error", redactor.text(f"{server.name!r} refused the call: {exc.message}"), refusal
            )
        if error is not None:
            metrics.ATTEMPT_FAILURES.labels(server.name, error.code).inc()
            if error.kind != "refused":
                await record_transition(server.name, breaker.record_failure(time.monotonic(), error.message))
            return after_error(view, attempt, error, now=datetime.now(UTC), max_attempts=settings.max_attempts)
        await record_transition(server.name, breaker.record_success())
        elapsed = (time.perf_counter() - started) * 1000
        # Tool output is recorded, hashed and signed: no secret value in it (scrubbed before the
        # digest), and inside what canonical JSON can carry.
        dumped: dict[str, Any] = within_canonical_domain(redactor.value(answered))
        return outcome(attempt, dumped, is_error, elapsed, max_output_bytes=settings.max_output_bytes)

    async def fold(trigger: StoredEvent, min_seq: int | None = None) -> tuple[IntentView, int]:
        """The intent as of at least ``trigger`` (or ``min_seq``: an event we appended)."""
        history = await svc.history(trigger, min_seq=min_seq)
        return fold_intent(history.events), history.last_seq

    def decide(view: IntentView) -> Invoke | ev.Payload | None:
        return decide_execution(view, now=datetime.now(UTC), max_attempts=settings.max_attempts)

    async def settle(view: IntentView, trigger: StoredEvent, answer: ev.Payload, last_seq: int, attempt: int) -> bool:
        """Record a verdict reached without calling the tool; False: the intent moved meanwhile."""
        try:
            await svc.append_all(view, trigger, [answer], last_seq, attempt=attempt)
        except StaleAppend:
            return False
        return True

    async def on_authorized(trigger: StoredEvent, raw: Msg) -> None:
        for _ in range(FENCE_RETRIES):
            view, last_seq = await fold(trigger)
            step = decide(view)
            if step is None:
                return
            if not isinstance(step, Invoke):
                if attempt_may_be_running(view):
                    # A started attempt with no verdict is "interrupted" only once nobody holds
                    # its lease: a redelivery (ack deadline missed while the bus was away) must
                    # not declare unknown a call that is still running or resolving its append.
                    try:
                        running = await leases.held(view.intent_id or "")
                    except LeaseUnavailable as exc:
                        raise Redeliver(
                            LEASE_BUSY_RETRY, f"not judging an open attempt without the lease store: {exc}"
                        ) from exc
                    if running:
                        raise Redeliver(LEASE_BUSY_RETRY, f"attempt {view.last_attempt} is still running")
                if await settle(view, trigger, step, last_seq, view.last_attempt):
                    return
                continue
            assert view.planned is not None
            ticket = await admission.admit(view.planned.server, view.planned.tool)
            if not isinstance(ticket, Ticket):
                if ticket is None or step.attempt > 1 or view.approval is not None:
                    # Its route is at its limit; a retry of a call already begun, or a call a
                    # person approved, is never shed: it comes back shortly, holding nothing.
                    raise Redeliver(SERVER_BUSY_RETRY, f"{view.planned.server}/{view.planned.tool} is at its limit")
                if await settle(view, trigger, ticket, last_seq, step.attempt):
                    return
                continue
            try:
                if not server_slots.take(view.planned.server):
                    # Its server is at its limit: come back shortly, holding no slot meanwhile.
                    calls.record_busy(view.planned.server, datetime.now(UTC))
                    limit = server_slots.limit_of(view.planned.server)
                    raise Redeliver(SERVER_BUSY_RETRY, f"{view.planned.server!r} runs {limit} calls already")
                try:
                    await attempt_call(trigger, raw, step.attempt, ticket=ticket, view=view, last_seq=last_seq)
                finally:
                    server_slots.give_back(view.planned.server)
            finally:
                admission.release(ticket)
            return
        raise RuntimeError(f"{trigger.envelope.intent_id}: gave up after {FENCE_RETRIES} stale appends")

    async def record_outcome(
        trigger: StoredEvent, view: IntentView, result: ev.Payload, last_seq: int, attempt: int
    ) -> bool:
        """Append what the call did. The call has happened, so its outcome is a fact to record,
        not a decision to retake: when something else landed on the intent meanwhile (an
        agent's message on its own subject moves the fence too), fold again and append after it.
        Returns False when the intent had already ended (then there is nothing to add)."""
        stale = 0
        while stale < FENCE_RETRIES:
            try:
                await svc.append_all(view, trigger, [result], last_seq, attempt=attempt, settle=SETTLE_OUTCOME)
                return True
            except AppendUnresolved as exc:
                # The bus is away. The outcome is known only here: hold on to it, never let a
                # redelivery take the call for interrupted.
                log.warning(
                    "%s: attempt %d's outcome not yet recorded (%s); trying again", view.intent_id, attempt, exc
                )
            except StaleAppend:
                stale += 1
                view, last_seq = await fold(trigger, min_seq=last_seq)
                if view.is_terminal:
                    log.warning("%s: intent ended elsewhere while attempt %d ran", view.intent_id, attempt)
                    return False
        raise RuntimeError(f"{view.intent_id}: could not record attempt {attempt} after {FENCE_RETRIES} tries")

    async def attempt_call(
        trigger: StoredEvent, raw: Msg, attempt: int, *, ticket: Ticket, view: IntentView, last_seq: int
    ) -> None:
        """Call the tool for ``attempt``, decided on ``view`` (read at ``last_seq``, covering the
        trigger). Not read again under the lease: ``execution.started`` is appended fenced at
        ``last_seq``, so if anything landed on the intent since (another replica's attempt, an
        end), the append is refused and the trigger comes again to be decided afresh."""
        intent_id = trigger.envelope.intent_id or ""
        try:
            if not await leases.acquire(intent_id, attempt):
                raise Redeliver(LEASE_BUSY_RETRY, f"attempt {attempt} is leased by another executor")
        except LeaseUnavailable as exc:
            raise Redeliver(LEASE_BUSY_RETRY, f"not executing without a lease: {exc}") from exc
        # From here to the recorded outcome, the message stays ours and the lease held, however
        # long a lost answer takes to resolve.
        heartbeat = asyncio.create_task(keep_alive(raw, leases, intent_id, attempt))
        try:
            assert view.planned is not None
            if attempt == 1 and (refusal := await refused_by_current_policy(view)) is not None:
                await record_outcome(trigger, view, refusal, last_seq, attempt)
                return
            started = ev.ExecutionStarted(
                attempt=attempt,
                idempotency_key=idempotency_key(view),
                server=view.planned.server,
                tool=view.planned.tool,
            )
            try:
                # Recorded before the call: a crash after this point is seen on redelivery. A
                # lost answer is resolved by looking for our own event: the call is made once
                # it is known stored, and never when it is not.
                [started_seq] = await svc.append_all(
                    view, trigger, [started], last_seq, attempt=attempt, settle=SETTLE_STARTED
                )
            except StaleAppend as exc:
                raise Redeliver(0.0, "the intent moved on before the call started") from exc
            result = await invoke(view, attempt, ticket)
            if not await record_outcome(trigger, view, result, started_seq, attempt):
                return
        finally:
            heartbeat.cancel()
            await leases.release(intent_id, attempt)
        if isinstance(result, ev.ExecutionAttemptFailed):
            raise Redeliver(result.retry_after_ms / 1000, f"attempt {attempt} failed: {result.reason}")

    async def reconcile_intent(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, Reconcile)
        for _ in range(FENCE_RETRIES):
            history = await read_history(svc.nc, cmd.agent_id, cmd.intent_id)
            view = fold_intent(history.events)
            if view.submitted_event is None:
                raise CommandError("not_found", f"no intent {cmd.intent_id!r} for agent {cmd.agent_id!r}")
            decision = reconcile(view, cmd.outcome, cmd.by, cmd.note, cmd.retry_intent_id)
            if isinstance(decision, str):
                code, _, reason = decision.partition(": ")
                raise CommandError(code, reason)
            try:
                await svc.append_all(
                    view, view.terminal or view.submitted_event, [decision], history.last_seq, "reconciled"
                )
            except StaleAppend:
                continue
            return {"intent_id": cmd.intent_id, "outcome": cmd.outcome, "by": cmd.by}
        raise CommandError("busy", "the intent kept changing; try again")

    # -- secrets: values arrive by request/reply and go to the store, never to a stream ---------

    async def referenced_by(name: str) -> list[str]:
        await follower.ensure_fresh()
        return sorted(s.name for s in catalog.servers.values() if name in references(s))

    async def audit(event: ev.SecretSet | ev.SecretDeleted, verb: str) -> None:
        await svc.append_control(
            subjects.secret_subject(event.name, verb),
            event,
            message_id=f"secret:{event.name}:{verb}:{settings.instance}:{time.time_ns()}",
        )

    async def set_secret(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, SetSecret)
        require_token(cmd.name, code="invalid_secret_name", what="secret name")
        if len(cmd.value) < MIN_SECRET_LENGTH:
            raise CommandError("invalid_secret", f"a secret's value must be at least {MIN_SECRET_LENGTH} characters")
        entry = await asyncio.to_thread(store_call, store.put, cmd.name, cmd.value)
        await audit(ev.SecretSet(name=cmd.name, set_by=cmd.by), "set")
        return {"name": entry.name, "set_at": entry.set_at, "referenced_by": await referenced_by(cmd.name)}

    async def delete_secret(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, DeleteSecret)
        if not await asyncio.to_thread(store_call, store.delete, cmd.name):
            raise CommandError("unknown_secret", f"no secret {cmd.name!r} is set")
        await audit(ev.SecretDeleted(name=cmd.name, deleted_by=cmd.by), "deleted")
        return {"name": cmd.name, "referenced_by": await referenced_by(cmd.name)}

    async def list_secrets(_body: dict[str, Any]) -> Any:
        entries = await asyncio.to_thread(store_call, store.entries)
        return [{"name": e.name, "set_at": e.set_at, "referenced_by": await referenced_by(e.name)} for e in entries]

    async def discover_tools(body: dict[str, Any]) -> Any:
        """For the registry: list the tools of a server whose configuration refers to secrets."""
        server = msgspec.convert(body, Discover).server
        known = store_call(secrets.current)
        redactor = secrets.redactor(known)
        resolved = resolve(server, known)
        if isinstance(resolved, str):
            code, _, reason = resolved.partition(": ")
            raise CommandError(code, reason)
        try:
            with scrubbed_pipe(secrets.latest) as errlog:
                tools = await asyncio.wait_for(
                    discover(resolved, scrub=redactor.value, errlog=errlog), DISCOVERY_TIMEOUT
                )
        except Exception as exc:
            cause = root_cause(exc)
            raise CommandError(
                "discovery_failed",
                redactor.text(f"could not list the tools of {server.name!r} over MCP: {type(cause).__name__}: {cause}"),
            ) from None
        return msgspec.to_builtins(tools)

    async def list_offered(body: dict[str, Any]) -> Any:
        """For the gateway (an agent may ask): what every registered server lists for ``method``
        (resources, resource templates, prompts), as it lists it, scrubbed of secret values. A server
        that cannot be reached, or offers none, lists nothing (and says why under ``error``)."""
        method = msgspec.convert(body, ListOffered).method
        await follower.ensure_fresh()

        async def one(server: ev.ServerRegistered) -> dict[str, Any]:
            known = {}
            with contextlib.suppress(SecretStoreError):
                known = secrets.current()
            redactor = secrets.redactor(known)
            resolved = resolve(server, known)
            if isinstance(resolved, str):
                return {"server": server.name, "items": [], "error": resolved}
            try:
                items = await asyncio.wait_for(pool.listing(resolved, method, timeout=LIST_TIMEOUT), LIST_TIMEOUT)
            except TimeoutError:
                return {"server": server.name, "items": [], "error": f"no answer within {LIST_TIMEOUT:g}s"}
            except (ServerUnavailable, CallInterrupted, MCPError) as exc:
                return {"server": server.name, "items": [], "error": redactor.text(str(exc))}
            return {"server": server.name, "items": redactor.value(items)}

        return await asyncio.gather(*(one(s) for _name, s in sorted(catalog.servers.items())))

    async def ping(_body: dict[str, Any]) -> Any:
        return {
            "service": svc.name,
            "servers": len(catalog.servers),
            "dead_letters": svc.dead_letters,
            "breakers": {name: b.state for name, b in breakers.items()},
        }

    async def cancel_refreshes() -> None:
        for task in refreshes.values():
            task.cancel()

    svc.on_shutdown(cancel_refreshes)
    svc.on_shutdown(pool.close)
    svc.on_shutdown(redis.aclose)
    # Calls run concurrently (a slow or hanging tool holds only its own slots), bounded in total
    # and per server; ack_wait is extended by in_progress() while a call runs.
    svc.consume_intents(
        subjects.intents_of_type("intent.authorized"),
        on_authorized,
        ack_wait=ACK_WAIT,
        batch_size=8,
        max_ack_pending=settings.executor_concurrency * 2,
        concurrency=settings.executor_concurrency,
    )
    # Nothing stranded: an unanswered call past its deadline ends outcome_unknown (non-idempotent)
    # or expired (idempotent), named by its attempt as on_authorized would name it.
    svc.sweep(sweep_execution, attempt=lambda view: view.last_attempt)
    svc.command("reconcile", reconcile_intent)
    svc.command("set_secret", set_secret)
    svc.command("delete_secret", delete_secret)
    svc.command("list_secrets", list_secrets)
    svc.command("discover", discover_tools)
    svc.command("list_offered", list_offered)
    svc.command("ping", ping)
    return svc


class Secrets:
    """The store's current values, and a redactor for them (rebuilt only when they change)."""

    def __init__(self, store: SecretStore) -> None:
        self._store = store
        self._known: dict[str, str] = {}
        self._redactor = Redactor({})
        self._redactor_for: dict[str, str] = {}

    def current(self) -> dict[str, str]:
        """Every secret's value.

        Raises:
            SecretStoreError: the store cannot be opened (wrong key, unreadable file).
        """
        self._known = self._store.values()
        return self._known

    def redactor(self, known: dict[str, str]) -> Redactor:
        if known != self._redactor_for:
            self._redactor, self._redactor_for = Redactor(known), known
        return self._redactor

    def latest(self) -> Redactor:
        """For logs and tool stderr: the redactor of the latest values that could be read."""
        with contextlib.suppress(SecretStoreError):
            self.current()
        return self.redactor(self._known)

    def scrub_text(self, text: str) -> str:
        """``text`` scrubbed with the latest values that could be read."""
        return self.latest().text(text)


def store_call(fn: Any, *args: Any) -> Any:
    """Run a store operation; its failure is a command error with the store's code."""
    try:
        return fn(*args)
    except SecretStoreError as exc:
        raise CommandError(exc.code, exc.message) from None


async def keep_alive(raw: Msg, leases: Leases, intent_id: str, attempt: int) -> None:
    """While a call runs: keep the message from redelivery and the lease from expiring."""
    while True:
        await asyncio.sleep(ACK_WAIT / 3)
        with contextlib.suppress(Exception):
            await raw.in_progress()
        await leases.renew(intent_id, attempt)
