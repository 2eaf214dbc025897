"""What every Writ service shares: the broker, the intent consumer adapter, the stage runner and
control commands. A service's own module wires its rules into these and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from faststream.nats import NatsBroker, NatsMessage
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck

from writ_common import commands, metrics, subjects
from writ_common import events as ev
from writ_common.bus import (
    SETTLE_SECONDS,
    History,
    HistoryBehind,
    Record,
    StaleAppend,
    append,
    append_control,
    dead_letter,
    msg_id,
    read_history,
)
from writ_common.busauth import durable_of
from writ_common.cancellation import cancellation
from writ_common.carried import carried_history, header_for
from writ_common.consumers import ConsumerGuard
from writ_common.control import ControlFollower
from writ_common.envelope import (
    Envelope,
    Producer,
    StoredEvent,
    UndecodableEvent,
    decode_json,
    encode,
    make_envelope,
    parse_time,
)
from writ_common.events import Payload, Stage
from writ_common.fold import IntentView, fold_intent
from writ_common.intent_consumer import DRAIN_TIMEOUT, BatchHandler, IntentConsumer, Redeliver
from writ_common.profiling import CpuSampler
from writ_common.settings import WritSettings
from writ_common.stranded import expiry, past_due
from writ_common.streams import ensure_streams
from writ_common.sweeper import Checkpoint, OpenIntents

log = logging.getLogger(__name__)

VERSION = "0.1.0"
FENCE_RETRIES = 8
SWEEP_TICK = 1.0  # seconds between sweeps for intents left open past their deadline
STOP_STEP_TIMEOUT = 15.0  # seconds one step of a clean stop may take before it is left behind
BEHIND_RETRY = 0.5  # seconds before a trigger whose history could not be read fresh comes again


def undecoded_body(msg: Any) -> Any:
    """The body as bytes: faststream would otherwise JSON-decode every body before a handler runs,
    unbounded (3000 levels deep raise RecursionError there, and the message is never acked).
    Writ's handlers decode what they receive themselves, within bounds (``envelope.check_bounds``)."""
    return msg.body


Decide = Callable[[IntentView], Awaitable[Sequence[Payload]]]
SweepRule = Callable[[IntentView, datetime], Sequence[Payload]]
CommandHandler = Callable[[dict[str, Any]], Awaitable[Any]]
CallerCommandHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]


def stage_consumer_config(
    settings: WritSettings, filter_subject: str, *, ack_wait: float, max_ack_pending: int
) -> ConsumerConfig:
    """A stage's durable consumer on the intents stream, as it is created: every event until
    acked (explicit acks, redelivered without limit), its progress kept as ``settings`` say."""
    return ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
        max_deliver=-1,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=filter_subject,
        # On a cluster a file-state consumer pays a replicated, fsync'd write per delivery:
        # the stream is the truth, this is progress, and replaying it is resumption.
        mem_storage=settings.consumer_state_in_memory or None,
        # On a cluster, every replica of a consumer records each delivery and ack in a round of
        # its own consensus: kept on one node (the default), a hop costs less; a node lost for good
        # is removed by an operator, and the service moves its consumer back (ConsumerGuard).
        num_replicas=settings.consumer_replicas or None,
    )


class Service:
    """One Writ service process: a faststream NATS broker plus the helpers its handlers use."""

    def __init__(self, name: str, settings: WritSettings) -> None:
        self.name = name
        self.settings = settings
        self.producer = Producer(service=name, instance=settings.instance, version=VERSION)
        self.broker = NatsBroker(
            settings.nats_servers(),
            name=f"writ-{name}",
            max_reconnect_attempts=-1,
            logger=None,
            decoder=undecoded_body,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            **settings.bus_options(name),
        )
        self.dead_letters = 0
        self.bus_stats: dict[str, int] = {}
        self._appends = 0
        self._startup: list[Callable[[], Awaitable[None]]] = []
        self._followers: dict[str, ControlFollower] = {}  # one per control stream, shared by its views
        self._shutdown: list[Callable[[], Awaitable[None]]] = []
        self._drains: list[Callable[[], Awaitable[None]]] = []
        self._consumers: list[Callable[[], Awaitable[None]]] = []  # pull loops, started last
        self._stopping = False
        self._before_stop: list[Callable[[], Awaitable[None]]] = []  # before the broker drains
        # Per trigger being handled (by envelope id): its message (on a first delivery, the
        # history it carries serves the first fold), and the records last folded or appended,
        # with their last sequence, which the events appended right after them carry.
        self._carried: dict[str, Msg] = {}
        self._basis: dict[str, tuple[int, tuple[Record, ...]]] = {}
        # Which intents are still open (followed by the sweep; read by whoever else asks, e.g.
        # policy's approval desk at start): one index per service, caught up on demand.
        self.open_intents = OpenIntents()

    async def _on_disconnected(self) -> None:
        log.warning("%s: disconnected from NATS; reconnecting", self.name)

    async def _on_reconnected(self) -> None:
        log.warning("%s: reconnected to NATS at %s", self.name, self.broker.connection.connected_url)

    @property
    def nc(self) -> Client:
        return self.broker.connection

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    def on_startup(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._startup.append(fn)

    def on_shutdown(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._shutdown.append(fn)

    def follow(self, stream: str, apply: Callable[[StoredEvent], None]) -> ControlFollower:
        """Fold a control stream into a view: replayed at start, followed live, stopped at shutdown.
        Views of one stream share one follower: one replay, one nudge subscription, one poll."""
        if (follower := self._followers.get(stream)) is not None:
            follower.also(apply)
            return follower
        follower = self._followers[stream] = ControlFollower(stream, apply)

        async def start() -> None:
            await follower.start(self.nc)

        self.on_startup(start)
        self.on_shutdown(follower.stop)
        return follower

    # -- intents ------------------------------------------------------------------------------

    def consume_intents(
        self,
        filter_subject: str,
        handler: Callable[[StoredEvent, Msg], Awaitable[None]],
        *,
        durable: str | None = None,
        max_ack_pending: int = 256,
        ack_wait: float = 10.0,
        batch_size: int = 16,
        concurrency: int = 16,
        on_batch: BatchHandler | None = None,
    ) -> None:
        """Subscribe ``handler`` to intent events with a durable JetStream pull consumer.

        A plain pull loop over a standing pull request (:class:`puller.Puller`, up to
        ``batch_size`` events ahead), handing events on in stream order. ``concurrency`` 1 runs
        one handler at a time, in order (the ledger: one writer of the chain); more (the stages)
        runs up to that many at once: one slow intent must not hold back the others, and appends
        are fenced per intent. ``max_ack_pending`` must be at least as large.

        Acks are manual: acked after the handler returned, nacked with backoff if it raised
        (redelivered, never terminated), dead-lettered then acked if the message is not a
        valid Writ event. ``max_ack_pending`` bounds work in flight; ``ack_wait`` must cover
        one handler run (the executor extends it while a tool runs). ``on_batch`` sees each pulled
        batch's valid events first, before ``handler`` sees them one by one (advisory work that is
        cheaper per batch).
        """

        durable = durable or durable_of(self.name)
        config = stage_consumer_config(
            self.settings, filter_subject, ack_wait=ack_wait, max_ack_pending=max_ack_pending
        )
        # A deleted consumer would stall this stage for good: recreate it at once.
        guard = ConsumerGuard(self.name, subjects.INTENTS_STREAM, durable, config)
        self.on_startup(lambda: guard.start(self.nc))
        self.on_shutdown(guard.stop)
        consumer = IntentConsumer(
            self,
            handler,
            durable=durable,
            config=config,
            batch_size=batch_size,
            concurrency=concurrency,
            on_batch=on_batch,
            guard=guard,
        )
        self._consumers.append(consumer.start)
        self._drains.append(consumer.drain)

    @property
    def stopping(self) -> bool:
        """A stop has begun: consumers hand no new message to a handler."""
        return self._stopping

    async def dead_letter(self, raw: Msg, code: str, reason: str) -> None:
        self.dead_letters += 1
        metrics.DEAD_LETTERS.labels(self.name, code).inc()
        log.warning("%s: dead-lettered %s: %s: %s", self.name, raw.subject, code, reason)
        await dead_letter(self.js, self.name, raw, code=code, reason=reason)

    async def run_stage(self, trigger: StoredEvent, stage: Stage, decide: Decide) -> list[int]:
        """Fold the intent, decide, append fenced; on a stale append fold again. Past the
        deadline the intent ends expired; asked by its agent to cancel, it ends cancelled.

        A redelivered trigger whose effect is already in the history makes ``decide`` return
        nothing: replay is resumption. Returns the stream sequences appended.
        """
        intent_id = trigger.envelope.intent_id
        for _ in range(FENCE_RETRIES):
            history = await self.history(trigger)
            view = fold_intent(history.events)
            payloads = expired_or_none(view, stage) or cancellation(view, stage) or await decide(view)
            if view.is_terminal or not payloads:
                return []
            try:
                return await self.append_all(view, trigger, payloads, history.last_seq)
            except StaleAppend:
                log.info("%s: %s moved on while deciding; folding again", self.name, intent_id)
        raise RuntimeError(f"{intent_id}: gave up after {FENCE_RETRIES} stale appends")

    def handling(self, trigger: StoredEvent, raw: Msg) -> None:
        """A consumer hands ``trigger`` to its handler: the history its message carries
        (:mod:`writ_common.carried`) may serve the handler's first fold."""
        self._carried[trigger.envelope.id] = raw  # looked at only if the handler folds

    def handled(self, trigger: StoredEvent) -> None:
        self._carried.pop(trigger.envelope.id, None)
        self._basis.pop(trigger.envelope.id, None)

    async def history(self, trigger: StoredEvent, *, min_seq: int | None = None) -> History:
        """The history of ``trigger``'s intent, at least as new as the trigger (or ``min_seq``):
        a stage never decides from a read that may be behind what it was told.

        The first fold of a trigger that carried its history takes that (no read); any later
        one reads (a fold again means the fence said the intent moved on).

        Raises:
            Redeliver: no read reached the trigger (replicas behind, a leader change): the
                trigger comes again shortly instead of being taken for "nothing to do".
        """
        agent_id, intent_id = trigger.envelope.agent_id, trigger.envelope.intent_id
        assert agent_id and intent_id
        raw = self._carried.pop(trigger.envelope.id, None)
        carried = None
        # Only on a first delivery: whatever made a message come again may have moved the intent on.
        if raw is not None and (min_seq is None or min_seq <= trigger.seq) and raw.metadata.num_delivered == 1:
            carried = carried_history(raw, trigger)
        if carried is not None:
            metrics.HISTORY_FOLDS.labels(self.name, "carried").inc()
            history = carried
        else:
            metrics.HISTORY_FOLDS.labels(self.name, "read").inc()
            try:
                history = await read_history(
                    self.nc,
                    agent_id,
                    intent_id,
                    min_seq=trigger.seq if min_seq is None else min_seq,
                    event_id=trigger.envelope.id,
                )
            except HistoryBehind as exc:
                metrics.REDELIVERIES.labels(self.name, "history_behind").inc()
                raise Redeliver(BEHIND_RETRY, str(exc)) from exc
        self._basis[trigger.envelope.id] = (history.last_seq, history.records)
        return history

    async def append_all(
        self,
        view: IntentView,
        trigger: StoredEvent,
        payloads: Sequence[Payload],
        last_seq: int,
        occurrence: int | str = 0,
        *,
        settle: float = SETTLE_SECONDS,
    ) -> list[int]:
        seqs = []
        # The records this append follows, when it follows the history last folded for the
        # trigger: the appended event carries them to the stage it triggers.
        folded = self._basis.get(trigger.envelope.id)
        basis = folded[1] if folded is not None and folded[0] == last_seq else None
        for payload in payloads:
            envelope = make_envelope(
                payload,
                producer=self.producer,
                intent_id=trigger.envelope.intent_id,
                agent_id=trigger.envelope.agent_id,
                causation_id=trigger.envelope.id,
                correlation_id=view.submitted_event.envelope.id if view.submitted_event else trigger.envelope.id,
            )
            data = encode(envelope)
            ack = await append(
                self.js,
                envelope,
                expected_last_seq=last_seq,
                occurrence=occurrence,
                settle=settle,
                data=data,
                headers=header_for(envelope.type, basis) if basis else None,
            )
            if basis is not None:
                assert envelope.agent_id and envelope.intent_id
                subject = subjects.intent_subject(envelope.agent_id, envelope.intent_id, envelope.type)
                basis = (*basis, Record(ack.seq, subject, msg_id(envelope.intent_id, envelope.type, occurrence), data))
                self._basis[trigger.envelope.id] = (ack.seq, basis)
            last_seq = ack.seq
            seqs.append(ack.seq)
            if code := getattr(payload, "code", None):
                metrics.DECISIONS.labels(self.name, envelope.type, code).inc()
            if not ack.duplicate:  # a retried append already counted
                count_segment(view, envelope)
            self.fault_point()
        return seqs

    async def append_control(
        self,
        subject: str,
        payload: Payload,
        *,
        message_id: str,
        expected_last_subject_seq: int | None = None,
        agent_id: str | None = None,
    ) -> PubAck:
        """Append one of this service's control events (agents, servers, policies, breakers...)."""
        envelope = make_envelope(payload, producer=self.producer, agent_id=agent_id)
        return await append_control(
            self.js, subject, envelope, message_id=message_id, expected_last_subject_seq=expected_last_subject_seq
        )

    def fault_point(self) -> None:
        """Test-only fault hook: once per arming of ``settings.fault_file``, die right after the
        N-th append, before the ack (``writ_common.faults``; fault tests)."""
        from writ_common import faults  # here, not at the top: only fault tests arm it

        self._appends += 1
        if self.settings.fault_file is not None and faults.trigger(self.settings.fault_file).hit():
            log.warning("%s: fault hook: exiting after append %d, before the ack", self.name, self._appends)
            os._exit(faults.EXIT_CODE)

    def every(self, what: str, period: float, step: Callable[[], Awaitable[None]], *, at_start: bool = False) -> None:
        """Run ``step`` every ``period`` seconds from the service's start to its stop (the sweeper,
        the executor's control loops), the first time at start when ``at_start``; a step that fails
        is logged and the next tick tries again. Stopped before the broker: a step in the middle
        of its reads would meet a draining connection."""
        tasks: list[asyncio.Task[None]] = []

        async def loop() -> None:
            wait = 0.0 if at_start else period
            while True:
                await asyncio.sleep(wait)
                wait = period
                try:
                    await step()
                except Exception:
                    log.exception("%s: the %s failed this tick; the next one tries again", self.name, what)

        async def start() -> None:
            tasks.append(asyncio.create_task(loop(), name=f"{self.name}-{what}"))

        async def stop() -> None:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        self.on_startup(start)
        self._before_stop.append(stop)

    def sweep(self, rule: SweepRule, *, occurrence: Callable[[IntentView], int | str] = lambda _v: 0) -> None:
        """Nothing stranded: every ``SWEEP_TICK``, end by ``rule`` the open intents past their
        deadline (and ``SWEEP_GRACE``), whatever left them open. Appends are fenced, so every
        replica may sweep; ``occurrence`` names the appended events as the stage's own path does,
        so a sweep and a stage deciding the same end store it once."""
        index = self.open_intents
        # A restart reads the log from the last checkpoint (above every intent open then but the
        # few it names), not from its first message (two events an intent, the whole log).
        checkpoint = Checkpoint(lambda: self.nc, durable_of(self.name))
        index.resume_with(checkpoint.read)

        async def sweep_once() -> None:
            await index.catch_up(self.nc)
            now = datetime.now(UTC)
            for intent_id, submitted in list(index.open.items()):
                if past_due(submitted, now):
                    await self.sweep_one(index, submitted, rule, occurrence)
                    log.debug("%s: swept %s", self.name, intent_id)
            point = index.resume_point()
            if checkpoint.due(point.start, time.monotonic()):
                await checkpoint.write(point)

        self.every("sweep for stranded intents", SWEEP_TICK, sweep_once)

    async def sweep_one(
        self,
        index: OpenIntents,
        submitted: StoredEvent,
        rule: SweepRule,
        occurrence: Callable[[IntentView], int | str],
    ) -> None:
        agent_id, intent_id = submitted.envelope.agent_id or "", submitted.envelope.intent_id or ""
        for _ in range(FENCE_RETRIES):
            history = await read_history(self.nc, agent_id, intent_id, min_seq=submitted.seq)
            view = fold_intent(history.events)
            if view.is_terminal:
                index.open.pop(intent_id, None)
                return
            payloads = rule(view, datetime.now(UTC))
            if not payloads:
                return
            try:
                await self.append_all(view, submitted, payloads, history.last_seq, occurrence(view))
                log.warning(
                    "%s: %s was stranded past its deadline; ended it (%s)",
                    self.name,
                    intent_id,
                    ", ".join(type(p).__name__ for p in payloads),
                )
                return
            except StaleAppend:
                continue

    # -- control commands ---------------------------------------------------------------------

    def command(self, name: str, handler: CommandHandler) -> None:
        """Serve ``writ.cmd.<service>.<name>`` (queue group: one replica answers)."""

        async def call(_subject: str, body: dict[str, Any]) -> Any:
            return await handler(body)

        self._serve(subjects.command_subject(self.name, name), name, call)

    def approver_command(self, name: str, handler: CallerCommandHandler) -> None:
        """Serve ``writ.cmd.<service>.approver.<approver_id>.<name>``: ``handler(approver_id, body)``.

        The bus lets only that approver's user publish there, so the id comes from the subject
        and is the caller's own; whatever the body claims is not.
        """

        async def call(subject: str, body: dict[str, Any]) -> Any:
            approver_id = subject.split(".")[-2]
            return await handler(approver_id, body)

        self._serve(subjects.approver_command_subject("*", name), name, call)

    def _serve(self, subject: str, name: str, call: Callable[[str, dict[str, Any]], Awaitable[Any]]) -> None:
        @self.broker.subscriber(subject, queue=f"writ-{self.name}-cmd")
        async def serve(msg: NatsMessage) -> bytes:
            try:
                # Bounded before decoding: a body nested 3000 deep is refused, not a RecursionError.
                body = decode_json(msg.raw_message.data or b"{}")
                if not isinstance(body, dict):
                    return commands.refuse("invalid_request", "the command body must be a JSON object")
                return commands.ok(await call(msg.raw_message.subject, body))
            except commands.CommandError as exc:
                return commands.refuse(exc.code, exc.message)
            except UndecodableEvent as exc:
                return commands.refuse("invalid_request", f"the command body is not usable: {exc}")
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return commands.refuse("invalid_request", str(exc))
            except Exception as exc:
                log.exception("%s: command %s failed", self.name, name)
                return commands.refuse("internal", f"{name} failed: {exc}")

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.settings.metrics_port or self.settings.metrics_port_file:
            metrics.serve_metrics(
                self.settings.metrics_port, self.settings.http_host, port_file=self.settings.metrics_port_file
            )
        await self.broker.connect()
        await ensure_streams(self.js, replicas=self.settings.stream_replicas, limits=self.settings.stream_limits())
        for fn in self._startup:
            await fn()
        await self.broker.start()
        for consume in self._consumers:
            await consume()
        log.info("%s: serving", self.name)

    async def stop(self) -> None:
        # Stop consuming first, so no handler runs against closed resources; let the handlers
        # in flight finish before that.
        self._stopping = True
        for drain in self._drains:
            await self._stop_step(drain, "draining its consumers", DRAIN_TIMEOUT + 5.0)
        for fn in self._before_stop:
            await self._stop_step(fn, "a task stopping before the broker")
        self.bus_stats = dict(self.nc.stats)  # what this connection sent and received, for tuning
        await self._stop_step(self.broker.stop, "stopping the broker")
        for fn in self._shutdown:
            await self._stop_step(fn, "a shutdown hook")

    async def _stop_step(self, fn: Callable[[], Awaitable[None]], what: str, timeout: float | None = None) -> None:
        """One step of a stop, bounded: a step that hangs (a tool server that never lets go, a
        store that never answers) is logged and left behind, so the stop ends and the process
        can exit; whatever it held is released with the process."""
        timeout = timeout or STOP_STEP_TIMEOUT
        step = asyncio.ensure_future(fn())
        done, _ = await asyncio.wait({step}, timeout=timeout)
        if not done:
            log.error("%s: %s (%s) did not finish within %gs; stopping without it", self.name, what, fn, timeout)
            step.cancel()  # not awaited: a step that ignores cancellation must not hold the stop
            return
        if not step.cancelled() and (exc := step.exception()) is not None:
            log.warning("%s: %s failed while stopping: %s", self.name, what, exc)

    async def serve_forever(self) -> None:
        """Run until SIGINT/SIGTERM, then stop cleanly (unacked work is redelivered)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()


def expired_or_none(view: IntentView, stage: Stage) -> list[Payload]:
    """Every stage checks the agent's deadline first: past it, the intent ends as expired."""
    return expiry(view, stage, datetime.now(UTC))


def configure_logging(service: str) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")


def event_loop_factory(settings: WritSettings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop by default: a service spends much of its CPU in the loop and its socket
    writes, which libuv does in C (about a fifth less CPU per governed call, ``make bench-load``)."""
    if settings.event_loop == "asyncio":
        return None
    import uvloop  # here: the settings may choose the standard loop (e.g. to debug with its tools)

    return uvloop.new_event_loop


def run_service(name: str, build: Callable[[WritSettings], Service]) -> None:
    """Entry point of ``python -m writ_<name>``: logging, tracing, then serve until signalled."""
    from writ_common.telemetry import setup_tracing

    configure_logging(name)
    settings = WritSettings()
    provider = setup_tracing(f"writ-{name}", trace_file=settings.trace_file)
    # CPU time, not wall time: what a service costs, whatever else the machine runs.
    sampler = CpuSampler(settings.profile_dir, name) if settings.profile_dir else None
    service = build(settings)
    try:
        if sampler is not None:
            sampler.start()
        with asyncio.Runner(loop_factory=event_loop_factory(settings)) as runner:
            runner.run(service.serve_forever())
    finally:
        if sampler is not None and settings.profile_dir:
            sampler.stop()
            # Messages and bytes this service's connection sent and received: its round trips.
            (settings.profile_dir / f"{name}.bus.json").write_text(json.dumps(service.bus_stats))
        provider.shutdown()  # flushes spans still batched for OTLP


FIRST_DECISIONS = {"intent.authorized": "allow", "approval.requested": "approval", "intent.denied": "deny"}


def count_segment(view: IntentView, appended: Envelope) -> None:
    """Per agent, server and tool: policy's first decision and how long it took from the plan, and
    how the intent ended. ``view`` is the intent before ``appended``."""
    planned = view.planned
    labels = metrics.segment(view.agent_id, planned.server if planned else None, planned.tool if planned else None)
    decision = FIRST_DECISIONS.get(appended.type)
    if decision is not None and view.approval is None and view.authorized is None:
        metrics.SEGMENT_DECISIONS.labels(*labels, decision).inc()
        plan = next((e for e in view.events if e.type == "intent.planned"), None)
        with contextlib.suppress(ValueError):
            if plan is not None:
                took = (parse_time(appended.occurred_at) - parse_time(plan.envelope.occurred_at)).total_seconds()
                metrics.SEGMENT_DECISION_SECONDS.labels(*labels).observe(max(0.0, took))
    status = ev.TERMINAL_STATUS.get(appended.type)
    if status is not None:
        metrics.SEGMENT_OUTCOMES.labels(*labels, status).inc()
