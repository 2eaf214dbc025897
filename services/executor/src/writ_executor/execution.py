"""The executor's stage: consumes intent.authorized and makes the one call with outside effects.

Order of a call: fold -> lease (Redis, fail closed) -> append execution.started (fenced at the
sequence the decision was read at) -> call under the lease, renewing it and the ack deadline ->
append the outcome -> ack. A crash anywhere is seen on redelivery by the fold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
import nats.errors
from mcp.shared.exceptions import MCPError
from nats.aio.msg import Msg

from writ_common import commands, metrics, operations, subjects
from writ_common import events as ev
from writ_common.bus import AppendUnresolved, StaleAppend, read_history
from writ_common.cancellation import call_cancelled
from writ_common.commands import CommandError, granted
from writ_common.digest import within_canonical_domain
from writ_common.envelope import StoredEvent
from writ_common.errors import Refusal
from writ_common.fold import IntentView, fold_intent
from writ_common.intent_consumer import Redeliver
from writ_common.mcp_client import IDEMPOTENCY_META_KEY
from writ_common.service import FENCE_RETRIES, Service
from writ_common.settings import WritSettings
from writ_executor.admission import Admission, Ticket
from writ_executor.breaker import CircuitBreaker, Transition
from writ_executor.cancels import Running, RunningCalls, until_stopped
from writ_executor.domain import (
    CallError,
    Invoke,
    after_error,
    attempt_may_be_running,
    call_arguments,
    call_timeout,
    circuit_open,
    counts_against_breaker,
    decide_execution,
    idempotency_key,
    may_shed,
    needs_recheck,
    not_run,
    outcome,
    policy_changed,
    reconcile,
    too_late_to_call,
    unknown_server,
)
from writ_executor.failures import CALL_FAILURES, classify
from writ_executor.input_rules import (
    ASK_MARGIN,
    Answer,
    Failed,
    Kind,
    input_answered,
    input_requested,
    no_answer,
    no_client,
    no_time,
    read_answer,
    too_large,
)
from writ_executor.known_servers import KnownServers
from writ_executor.lease import Leases, LeaseUnavailable
from writ_executor.redaction import Redactor, references, resolve
from writ_executor.resource_relay import SUBSCRIPTION_OPERATIONS, ResourceRelay
from writ_executor.secret_commands import Secrets
from writ_executor.secret_store import SecretStoreError
from writ_executor.sessions import SessionPool
from writ_executor.slots import SERVER_BUSY_RETRY
from writ_executor.tuner import ConcurrencyTuner

log = logging.getLogger(__name__)

ACK_WAIT = 10.0  # extended every ACK_WAIT/3 while a call runs; also the lease's time to live
LEASE_BUSY_RETRY = 2.0
# How long a lost answer to execution.started is looked into before giving up (then the message
# is redelivered and the log decides). An outcome, once known, is held on to until recorded.
SETTLE_STARTED = 300.0
SETTLE_OUTCOME = 60.0
RECHECK_TIMEOUT = 10.0  # seconds policy has to recheck a call authorized under an earlier bundle


class Reconcile(msgspec.Struct, kw_only=True):
    intent_id: str
    agent_id: str
    outcome: Literal["succeeded", "failed", "retry"]
    by: str
    note: str = ""
    retry_intent_id: str | None = None


class PolicyInForce:
    """The digest of the bundle in force, as the policy stream last said."""

    def __init__(self, svc: Service) -> None:
        self.digest: str | None = None
        self.follower = svc.follow(subjects.POLICY_STREAM, self.apply)

    def apply(self, event: StoredEvent) -> None:
        if isinstance(event.payload, ev.PolicyBundlePublished):
            self.digest = event.payload.policy_digest


class Execution:
    """The calls: what to do for an authorized intent, under which lease and limits, and how each
    call ended. Owns the breakers per server; shares the session pool, the secrets, the catalog
    and the tuner's slots with the rest of the executor."""

    def __init__(
        self,
        svc: Service,
        settings: WritSettings,
        *,
        servers: KnownServers,
        secrets: Secrets,
        pool: SessionPool,
        leases: Leases,
        tuner: ConcurrencyTuner,
        relay: ResourceRelay,
    ) -> None:
        self.svc = svc
        self.settings = settings
        self.servers = servers
        self.secrets = secrets
        self.pool = pool
        self.leases = leases
        self.tuner = tuner
        self.relay = relay  # subscribe_resource / unsubscribe_resource run there
        self.admission = Admission(settings)  # adaptive limit per route; a first attempt past it: overloaded
        self.breakers: dict[str, CircuitBreaker] = {}
        self.policy = PolicyInForce(svc)
        self.running = RunningCalls(lambda: svc.nc)  # what a cancel request may stop here

    # -- the stage ----------------------------------------------------------------------------

    async def on_authorized(self, trigger: StoredEvent, raw: Msg) -> None:
        for _ in range(FENCE_RETRIES):
            view, last_seq = await self.fold(trigger)
            step = decide_execution(view, now=datetime.now(UTC), max_attempts=self.settings.max_attempts)
            if step is None:
                return
            if not isinstance(step, Invoke):
                if await self.end_without_call(view, trigger, step, last_seq):
                    return
                continue
            assert view.planned is not None
            capacity = await self.declared_capacity(view.planned.server)
            ticket = await self.admission.admit(
                view.planned.server, view.planned.tool, capacity, agent=view.agent_id or ""
            )
            if not isinstance(ticket, Ticket):
                if ticket is None or not may_shed(view, step.attempt):
                    # Its route is at its limit; a retry of a call already begun, or a call a
                    # person approved, is never shed: it comes back shortly, holding nothing.
                    raise Redeliver(SERVER_BUSY_RETRY, f"{view.planned.server}/{view.planned.tool} is at its limit")
                if await self.settle(view, trigger, ticket, last_seq, step.attempt):
                    return
                continue
            try:
                await self.in_a_slot(
                    trigger, raw, step.attempt, ticket=ticket, view=view, last_seq=last_seq, capacity=capacity
                )
            finally:
                self.admission.release(ticket)
            return
        raise RuntimeError(f"{trigger.envelope.intent_id}: gave up after {FENCE_RETRIES} stale appends")

    async def declared_capacity(self, server: str) -> int | None:
        """The most calls ``server`` takes at once, as declared at its registration (None: not said)."""
        registered = await self.servers.get(server)
        return registered.max_concurrency if registered is not None else None

    async def fold(self, trigger: StoredEvent, min_seq: int | None = None) -> tuple[IntentView, int]:
        """The intent as of at least ``trigger`` (or ``min_seq``: an event we appended)."""
        history = await self.svc.history(trigger, min_seq=min_seq)
        return fold_intent(history.events), history.last_seq

    async def end_without_call(
        self, view: IntentView, trigger: StoredEvent, verdict: ev.Payload, last_seq: int
    ) -> bool:
        """Record a verdict reached without calling (expired, interrupted, gave up, mismatch).

        A started attempt with no verdict is "interrupted" only once nobody holds its lease: a
        redelivery (ack deadline missed while the bus was away) must not declare unknown a call
        that is still running or resolving its append."""
        if attempt_may_be_running(view):
            try:
                running = await self.leases.held(view.intent_id or "")
            except LeaseUnavailable as exc:
                raise Redeliver(
                    LEASE_BUSY_RETRY, f"not judging an open attempt without the lease store: {exc}"
                ) from exc
            if running:
                raise Redeliver(LEASE_BUSY_RETRY, f"attempt {view.last_attempt} is still running")
        return await self.settle(view, trigger, verdict, last_seq, view.last_attempt)

    async def settle(
        self, view: IntentView, trigger: StoredEvent, answer: ev.Payload, last_seq: int, attempt: int
    ) -> bool:
        """Record a verdict reached without calling the tool; False: the intent moved meanwhile."""
        try:
            await self.svc.append_all(view, trigger, [answer], last_seq, occurrence=attempt)
        except StaleAppend:
            return False
        return True

    async def in_a_slot(
        self,
        trigger: StoredEvent,
        raw: Msg,
        attempt: int,
        *,
        ticket: Ticket,
        view: IntentView,
        last_seq: int,
        capacity: int | None,
    ) -> None:
        """Run the attempt in one of its server's slots (at most ``capacity``, the server's declared
        one); none free: it comes back shortly, holding none."""
        assert view.planned is not None
        server = view.planned.server
        slots, agent = self.tuner.slots, view.agent_id or ""
        long = ticket.limiter.queue_room_ms() == 0.0
        if not slots.take(server, capacity, agent=agent, now=time.monotonic(), long=long):
            if slots.has_room(server, capacity):
                metrics.SHARE_DEFERRALS.labels("server", server).inc()
                raise Redeliver(SERVER_BUSY_RETRY, f"another agent is due {server!r}'s next slot")
            self.tuner.calls.record_busy(server, datetime.now(UTC))
            raise Redeliver(SERVER_BUSY_RETRY, f"{server!r} runs {slots.limit_of(server, capacity)} calls already")
        try:
            await self.attempt_call(trigger, raw, attempt, ticket=ticket, view=view, last_seq=last_seq)
        finally:
            slots.give_back(server, agent)

    async def attempt_call(
        self, trigger: StoredEvent, raw: Msg, attempt: int, *, ticket: Ticket, view: IntentView, last_seq: int
    ) -> None:
        """Call the tool for ``attempt``, decided on ``view`` (read at ``last_seq``, covering the
        trigger). Not read again under the lease: ``execution.started`` is appended fenced at
        ``last_seq``, so if anything landed on the intent since (another replica's attempt, an
        end), the append is refused and the trigger comes again to be decided afresh."""
        intent_id = trigger.envelope.intent_id or ""
        # A first attempt is rechecked under the lease against the policy in force, which needs the
        # policy stream read to its head: that read goes out beside the lease's round trip.
        reads: list[Awaitable[bool]] = [self.leases.acquire(intent_id, attempt)]
        if attempt == 1:
            reads.append(self.policy.follower.ensure_fresh())
        try:
            leased, *_ = await asyncio.gather(*reads)
        except LeaseUnavailable as exc:
            raise Redeliver(LEASE_BUSY_RETRY, f"not executing without a lease: {exc}") from exc
        if not leased:
            raise Redeliver(LEASE_BUSY_RETRY, f"attempt {attempt} is leased by another executor")
        # From here to the recorded outcome, the message stays ours and the lease held, however
        # long a lost answer takes to resolve.
        heartbeat = asyncio.create_task(keep_alive(raw, self.leases, intent_id, attempt))
        ended = False
        try:
            result = await self.start_and_call(trigger, attempt, ticket=ticket, view=view, last_seq=last_seq)
            ended = not isinstance(result, ev.ExecutionAttemptFailed)
        finally:
            heartbeat.cancel()
            # The lease of an intent that has ended is left to expire: nothing asks for it again
            # (a redelivery finds the intent ended), and letting go costs a Redis round trip per
            # call. A failed attempt, or one cut short, lets go at once for the next.
            if not ended:
                await self.leases.release(intent_id, attempt)
        if isinstance(result, ev.ExecutionAttemptFailed):
            raise Redeliver(result.retry_after_ms / 1000, f"attempt {attempt} failed: {result.reason}")

    async def start_and_call(
        self, trigger: StoredEvent, attempt: int, *, ticket: Ticket, view: IntentView, last_seq: int
    ) -> ev.Payload | None:
        """Under the lease: recheck a first attempt against the policy in force, append
        ``execution.started``, call, record the outcome. Returns the outcome recorded (None when
        nothing was called, or the intent ended elsewhere meanwhile)."""
        assert view.planned is not None
        if attempt == 1 and (refusal := await self.refused_by_current_policy(view)) is not None:
            await self.record_outcome(trigger, view, refusal, last_seq, attempt)
            return None
        # Decided in time, but the admission wait, the lease and the recheck took what was left.
        if (late := too_late_to_call(view, datetime.now(UTC), ticket.limiter.baseline_ms)) is not None:
            await self.record_outcome(trigger, view, late, last_seq, attempt)
            return None
        started = ev.ExecutionStarted(
            attempt=attempt,
            idempotency_key=idempotency_key(view),
            server=view.planned.server,
            tool=view.planned.tool,
        )
        # From before execution.started: a cancel request landing after our fold moves the fence
        # (the append below is refused and the trigger decided afresh) or stops the call.
        with self.running.track(view.agent_id or "", view.intent_id or "") as running:
            try:
                # Recorded before the call: a crash after this point is seen on redelivery. A lost
                # answer is resolved by looking for our own event: the call is made once it is known
                # stored, and never when it is not.
                [started_seq] = await self.svc.append_all(
                    view, trigger, [started], last_seq, occurrence=attempt, settle=SETTLE_STARTED
                )
            except StaleAppend as exc:
                raise Redeliver(0.0, "the intent moved on before the call started") from exc
            result = await self.invoke_unless_cancelled(view, attempt, ticket, running)
        if not await self.record_outcome(trigger, view, result, started_seq, attempt):
            return None
        return result

    async def refused_by_current_policy(self, view: IntentView) -> ev.ExecutionFailed | None:
        """A call authorized under an earlier bundle runs only if its permit still holds now;
        policy decides (it owns the rules), asked only when the bundle has changed. The policy
        stream was read to its head beside taking the lease (``attempt_call``)."""
        if not needs_recheck(view, self.policy.digest):
            return None
        try:
            verdict = await commands.call(
                self.svc.nc,
                "policy",
                "recheck",
                {"agent_id": view.agent_id, "intent_id": view.intent_id},
                timeout=RECHECK_TIMEOUT,
            )
        except CommandError as exc:
            # Fail closed: not calling under a policy we could not consult; the message comes again.
            raise Redeliver(LEASE_BUSY_RETRY, f"policy could not recheck the call: {exc}") from exc
        return None if verdict.get("holds") else policy_changed(str(verdict.get("reason", "")))

    async def record_outcome(
        self, trigger: StoredEvent, view: IntentView, result: ev.Payload, last_seq: int, attempt: int
    ) -> bool:
        """Append what the call did. The call has happened, so its outcome is a fact to record,
        not a decision to retake: when something else landed on the intent meanwhile (an
        agent's message on its own subject moves the fence too), fold again and append after it.
        Returns False when the intent had already ended (then there is nothing to add)."""
        stale = 0
        while stale < FENCE_RETRIES:
            try:
                await self.svc.append_all(view, trigger, [result], last_seq, occurrence=attempt, settle=SETTLE_OUTCOME)
                return True
            except AppendUnresolved as exc:
                # The bus is away. The outcome is known only here: hold on to it, never let a
                # redelivery take the call for interrupted.
                log.warning(
                    "%s: attempt %d's outcome not yet recorded (%s); trying again", view.intent_id, attempt, exc
                )
            except StaleAppend:
                stale += 1
                view, last_seq = await self.fold(trigger, min_seq=last_seq)
                if view.is_terminal:
                    log.warning("%s: intent ended elsewhere while attempt %d ran", view.intent_id, attempt)
                    return False
        raise RuntimeError(f"{view.intent_id}: could not record attempt {attempt} after {FENCE_RETRIES} tries")

    # -- the call -----------------------------------------------------------------------------

    async def invoke_unless_cancelled(
        self, view: IntentView, attempt: int, ticket: Ticket, running: Running
    ) -> ev.Payload:
        """:meth:`invoke`, stopped when the agent's cancel request arrives meanwhile: then the
        intent ends ``cancelled`` (the server was sent ``notifications/cancelled``)."""
        if running.request is not None:
            return call_cancelled(running.request, attempt, sent=False)
        result, stopped = await until_stopped(self.invoke(view, attempt, ticket), running)
        if stopped or result is None:
            log.info("%s: attempt %d cancelled at its agent's request", view.intent_id, attempt)
            return call_cancelled(running.request or ev.IntentCancelRequested(), attempt, sent=True)
        return result

    async def invoke(self, view: IntentView, attempt: int, ticket: Ticket) -> ev.Payload:
        """Make the call (or find it cannot be made) and name how it ended."""
        planned = view.planned
        assert planned is not None and view.intent_id
        server = await self.servers.get(planned.server)
        if server is None:
            return not_run(attempt, unknown_server(planned.server))
        try:
            known = self.secrets.current()
        except SecretStoreError as exc:
            if references(server):
                return ev.ExecutionFailed(attempt=attempt, retryable=False, code="secrets_unavailable", reason=str(exc))
            known = {}
        redactor = self.secrets.redactor(known)
        resolved = resolve(server, known)
        if isinstance(resolved, Refusal):
            return not_run(attempt, resolved)
        breaker = self.breakers.setdefault(server.name, CircuitBreaker())
        allowed, transition = breaker.allow(time.monotonic())
        await self.record_transition(server.name, transition)
        if not allowed:
            return self.after_error(view, attempt, circuit_open(server.name, breaker.retry_in(time.monotonic())))
        started = time.perf_counter()
        try:
            answered, is_error = await self.send(view, resolved, attempt, ticket, redactor)
        except CALL_FAILURES as exc:
            error = classify(exc, server.name, redactor, max_output_bytes=self.settings.max_output_bytes)
            metrics.ATTEMPT_FAILURES.labels(server.name, error.code).inc()
            if counts_against_breaker(error):
                await self.record_transition(server.name, breaker.record_failure(time.monotonic(), error.message))
            return self.after_error(view, attempt, error)
        self.tuner.calls.record_call(server.name, datetime.now(UTC), time.perf_counter() - started)
        await self.record_transition(server.name, breaker.record_success())
        elapsed = (time.perf_counter() - started) * 1000
        # Tool output is recorded, hashed and signed: no secret value in it (scrubbed before the
        # digest), and inside what canonical JSON can carry.
        dumped: dict[str, Any] = within_canonical_domain(redactor.value(answered))
        return outcome(attempt, dumped, is_error, elapsed, max_output_bytes=self.settings.max_output_bytes)

    async def send(
        self, view: IntentView, server: ev.ServerRegistered, attempt: int, ticket: Ticket, redactor: Redactor
    ) -> tuple[Any, bool]:
        """The request itself, over the server's warm session: the tool's answer and whether the
        tool said it failed. Raises what the session raises (:data:`failures.CALL_FAILURES`)."""
        planned, submitted = view.planned, view.submitted
        assert planned is not None and view.intent_id
        timeout = call_timeout(view, datetime.now(UTC), self.settings.tool_timeout)
        meta = {IDEMPOTENCY_META_KEY: idempotency_key(view), "writ/attempt": attempt}
        operation = submitted.operation if submitted else operations.CALL_TOOL
        relay = AgentRelay(
            self.svc, self.settings, view.agent_id or "", view.intent_id, redactor, attempt=attempt, timeout=timeout
        )
        try:
            if operation == operations.CALL_TOOL:
                called = await self.pool.call(
                    server,
                    planned.tool,
                    call_arguments(view),
                    meta=meta,
                    timeout=timeout,
                    relay=relay,
                    ask=lambda kind, params: relay.ask(kind, params, record=self.record_input(view)),
                    on_session=ticket.sent,
                )
                return called.model_dump(mode="json", by_alias=True, exclude_none=True), bool(called.is_error)
            if operation in SUBSCRIPTION_OPERATIONS:
                # One upstream subscription per resource serves every agent holding it.
                return await self.relay.execute(view, server, meta=meta, timeout=timeout, on_session=ticket.sent), False
            method = operations.OPERATIONS[operation].method
            params = operations.request_params(operation, planned.tool, submitted.arguments if submitted else {})
            answered = await self.pool.request(
                server, method, params, meta=meta, timeout=timeout, on_session=ticket.sent
            )
            return answered, False
        finally:
            ticket.received()  # the route's latency signal: the call itself, not a session's start

    def record_input(self, view: IntentView) -> Callable[[ev.Payload, str], Awaitable[None]]:
        """Appends what a call asked its client, and what was answered, to the intent's history
        while the call runs: after whatever is last on it (beside the intent's course, so no
        decision is retaken; the outcome's append then finds the fence moved, and folds again)."""

        async def record(payload: ev.Payload, occurrence: str) -> None:
            assert view.submitted_event is not None
            for _ in range(FENCE_RETRIES):
                history = await read_history(self.svc.nc, view.agent_id or "", view.intent_id or "")
                if fold_intent(history.events).is_terminal:
                    return
                try:
                    await self.svc.append_all(
                        view, view.submitted_event, [payload], history.last_seq, occurrence=occurrence
                    )
                    return
                except StaleAppend:
                    continue
            log.warning("%s: could not record %s after %d tries", view.intent_id, payload, FENCE_RETRIES)

        return record

    def after_error(self, view: IntentView, attempt: int, error: CallError) -> ev.Payload:
        return after_error(view, attempt, error, now=datetime.now(UTC), max_attempts=self.settings.max_attempts)

    async def record_transition(self, server: str, transition: Transition | None) -> None:
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
            await self.svc.append_control(
                subjects.breaker_subject(server),
                event,
                message_id=f"breaker:{server}:{self.settings.instance}:{time.time_ns()}",
            )

    # -- a person settles an unknown outcome ----------------------------------------------------

    async def reconcile_intent(self, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, Reconcile)
        for _ in range(FENCE_RETRIES):
            history = await read_history(self.svc.nc, cmd.agent_id, cmd.intent_id)
            view = fold_intent(history.events)
            if view.submitted_event is None:
                raise CommandError("not_found", f"no intent {cmd.intent_id!r} for agent {cmd.agent_id!r}")
            decision = granted(reconcile(view, cmd.outcome, cmd.by, cmd.note, cmd.retry_intent_id))
            try:
                await self.svc.append_all(
                    view, view.terminal or view.submitted_event, [decision], history.last_seq, "reconciled"
                )
            except StaleAppend:
                continue
            return {"intent_id": cmd.intent_id, "outcome": cmd.outcome, "by": cmd.by}
        raise CommandError("busy", "the intent kept changing; try again")

    def wire(self) -> None:
        # Calls run concurrently (a slow or hanging tool holds only its own slots), bounded in total
        # and per server; ack_wait is extended by in_progress() while a call runs.
        self.svc.consume_intents(
            subjects.intents_of_type("intent.authorized"),
            self.on_authorized,
            ack_wait=ACK_WAIT,
            batch_size=8,
            max_ack_pending=self.settings.executor_concurrency * 2,
            concurrency=self.settings.executor_concurrency,
        )
        self.svc.command("reconcile", self.reconcile_intent)
        self.svc.on_startup(self.running.start)
        self.svc.on_shutdown(self.running.stop)


class AgentRelay:
    """What the tool's server says during the call (progress, log messages), scrubbed of secret
    values, published for the agent that asked (core NATS, not recorded: a gateway waiting on
    the call hears it; nobody else may). Over the output limit, it is not passed on.

    And what the server asks the agent's client (sampling, elicitation): recorded in the intent's
    history with its answer, asked on core NATS with the answer subject as reply, under the call's
    deadline."""

    def __init__(
        self,
        svc: Service,
        settings: WritSettings,
        agent_id: str,
        intent_id: str,
        redactor: Redactor,
        *,
        attempt: int = 0,
        timeout: float = 0.0,
    ) -> None:
        self.svc = svc
        self.max_bytes = settings.max_output_bytes
        self.agent_id = agent_id
        self.intent_id = intent_id
        self.redactor = redactor
        self.attempt = attempt
        self.deadline = time.monotonic() + timeout
        self.asks = 0

    async def ask(
        self, kind: Kind, params: dict[str, Any], *, record: Callable[[ev.Payload, str], Awaitable[None]]
    ) -> dict[str, Any]:
        """The client's answer to the server's request (its result as JSON), each recorded.

        Raises:
            MCPError: no answer (no client listening, none in time, the client's own error): the
                server is told so, and the call ends as the server then decides.
        """
        self.asks += 1
        ask = self.asks
        request: dict[str, Any] = within_canonical_domain(self.redactor.value(params))
        occurrence = f"{self.attempt}.{ask}"
        await record(input_requested(self.attempt, kind, ask, request, max_bytes=self.max_bytes), occurrence)
        answer, result = await self._asked(kind, ask, request)
        # Recorded scrubbed; the server gets the answer as the client gave it.
        kept = result if isinstance(result, Failed) else within_canonical_domain(self.redactor.value(result))
        answered = input_answered(
            self.attempt, kind, ask, by=self.agent_id, answer=answer, result=kept, max_bytes=self.max_bytes
        )
        await record(answered, occurrence)
        if isinstance(result, Failed):
            log.info("%s: %s request %d not answered: %s", self.intent_id, kind, ask, result.message)
            raise MCPError(result.rpc_code, result.message)
        return result

    async def _asked(
        self, kind: Kind, ask: int, request: dict[str, Any]
    ) -> tuple[Answer | None, dict[str, Any] | Failed]:
        waited = self.deadline - time.monotonic() - ASK_MARGIN
        if (late := no_time(waited)) is not None:
            return None, late
        body = msgspec.json.encode({"ask": ask, "kind": kind, "params": request})
        if len(body) > self.max_bytes:
            return None, too_large(len(body), self.max_bytes)
        nc = self.svc.nc
        reply = subjects.input_answer_subject(self.agent_id, self.intent_id, f"{self.attempt}-{ask}")
        sub = await nc.subscribe(reply, max_msgs=1)
        try:
            # With a reply subject: nobody listening, the server says so at once (no responders).
            await nc.publish(subjects.input_request_subject(self.agent_id, self.intent_id), body, reply=reply)
            msg = await sub.next_msg(timeout=waited)
        except nats.errors.TimeoutError:
            return None, no_answer(waited)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if msg.headers and msg.headers.get("Status") == "503":
            return None, no_client(self.intent_id)
        return read_answer(kind, msg.data)

    async def __call__(self, kind: str, params: dict[str, Any]) -> None:
        body = msgspec.json.encode(within_canonical_domain(self.redactor.value(params)))
        if len(body) <= self.max_bytes:
            await self.svc.nc.publish(subjects.relay_notice_subject(self.agent_id, self.intent_id, kind), body)


async def keep_alive(raw: Msg, leases: Leases, intent_id: str, attempt: int) -> None:
    """While a call runs: keep the message from redelivery and the lease from expiring."""
    while True:
        await asyncio.sleep(ACK_WAIT / 3)
        with contextlib.suppress(Exception):
            await raw.in_progress()
        await leases.renew(intent_id, attempt)
