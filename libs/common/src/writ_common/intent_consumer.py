"""The intent consumer adapter: one durable pull consumer on the intents stream feeding a stage.

A plain pull loop over a standing pull request (:class:`puller.Puller`), handing events on in
stream order. Acks are manual: acked after the handler returned, nacked with backoff if it raised
(redelivered, never terminated), dead-lettered then acked if the message is not a valid Writ
event. What the stage decides is the handler's business; this module only owns delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from nats.js.errors import NotFoundError

from writ_common import metrics, subjects
from writ_common.bus import StorageRefused, stored
from writ_common.consumers import ConsumerGuard
from writ_common.envelope import StoredEvent, UndecodableEvent, parse_time
from writ_common.puller import Puller
from writ_common.telemetry import stage_span

log = logging.getLogger(__name__)

IntentHandler = Callable[[StoredEvent, Msg], Awaitable[None]]
BatchHandler = Callable[[list[StoredEvent]], Awaitable[None]]

DRAIN_TIMEOUT = 20.0  # seconds a clean stop waits for handlers in flight
STORAGE_RETRY = 5.0  # seconds between tries while a stream is full
PULL_WAIT = 1.0  # seconds the pull loop waits for an event before looking whether to ask again
STOPPING_DELAY = 1.0  # a message met while stopping comes again this much later (elsewhere)


class Redeliver(Exception):
    """Raised by a handler: nack this message for redelivery after ``delay`` seconds (not an
    error: e.g. a lease held by another replica)."""

    def __init__(self, delay: float, why: str) -> None:
        super().__init__(why)
        self.delay = delay
        self.why = why


class ConsumingService(Protocol):
    """What the consumer needs of its service (``writ_common.service.Service``)."""

    name: str

    @property
    def nc(self) -> Client: ...

    @property
    def stopping(self) -> bool: ...

    async def dead_letter(self, raw: Msg, code: str, reason: str) -> None: ...

    def handling(self, trigger: StoredEvent, raw: Msg) -> None: ...

    def handled(self, trigger: StoredEvent) -> None: ...


def retry_delay(delivered: int) -> float:
    """Backoff of a handler that raised: 0.5 s after the first delivery, doubling, at most 30 s."""
    return min(30.0, 0.25 * float(2 ** min(delivered, 7)))


class IntentConsumer:
    """Durable ``durable`` on the intents stream, filtered to ``config.filter_subject``.

    ``concurrency`` 1 runs one handler at a time, in order (the ledger: one writer of the chain);
    more (the stages) runs up to that many at once: one slow intent must not hold back the others,
    and appends are fenced per intent. ``config.max_ack_pending`` bounds work in flight.
    """

    def __init__(
        self,
        svc: ConsumingService,
        handler: IntentHandler,
        *,
        durable: str,
        config: ConsumerConfig,
        batch_size: int,
        concurrency: int,
        on_batch: BatchHandler | None = None,
        guard: ConsumerGuard | None = None,
    ) -> None:
        self.svc = svc
        self.guard = guard
        self.handler = handler
        self.on_batch = on_batch
        self.durable = durable
        self.config = config
        self.batch_size = batch_size
        # Handlers in flight when concurrent (None: one at a time, in the pull loop's own task).
        self.slots = asyncio.Semaphore(concurrency) if concurrency > 1 else None
        self.running: set[asyncio.Task[None]] = set()
        self.loops: list[asyncio.Task[None]] = []
        self.pullers: list[Puller] = []
        self.idle: set[asyncio.Task[None]] = set()  # loops waiting for events, holding none

    async def start(self) -> None:
        # Created with ``config`` if the durable does not exist yet (an existing one is used as
        # it is, as nats-py's pull_subscribe does); the puller asks it by name.
        js = self.svc.nc.jetstream()
        try:
            await js.consumer_info(subjects.INTENTS_STREAM, self.durable)
        except NotFoundError:
            await js.add_consumer(
                subjects.INTENTS_STREAM, self.config.evolve(durable_name=self.durable, name=self.durable)
            )
        puller = Puller(self.svc.nc, subjects.INTENTS_STREAM, self.durable, self.batch_size)
        await puller.start()
        self.pullers.append(puller)
        self.loops.append(asyncio.create_task(self.pull(puller), name=f"{self.svc.name}-pull"))

    async def drain(self) -> None:
        # A clean stop lets the pull loop end its message and calls in flight finish (a cut call
        # would be an unknown outcome); then the pull inbox goes, before the broker drains.
        for loop in self.idle & set(self.loops):
            loop.cancel()  # holds no message: nothing to finish (a delivery on its way comes again)
        pending = [*self.loops, *self.running]
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_TIMEOUT)
        for loop in self.loops:
            loop.cancel()
        for puller in self.pullers:
            with contextlib.suppress(nats.errors.Error):
                await puller.stop()

    async def pull(self, puller: Puller) -> None:
        me = asyncio.current_task()
        assert me is not None
        while not self.svc.stopping:
            self.idle.add(me)
            try:
                msgs = await puller.next_batch(PULL_WAIT)
            except TimeoutError:
                continue  # nothing new within PULL_WAIT (a lost request is asked again)
            except nats.errors.Error as exc:  # reconnecting: the next wait asks again
                log.info("%s: pulling from %s failed (%s); pulling again", self.svc.name, self.durable, exc)
                await asyncio.sleep(PULL_WAIT)
                continue
            finally:
                self.idle.discard(me)
            if self.guard is not None:
                msgs = await self.skip_handled(self.guard, msgs)
                if not msgs:
                    continue
            decoded = [_decoded(raw) for raw in msgs]
            if self.on_batch is not None:
                await self.prepare(decoded)
            for number, (raw, event) in enumerate(zip(msgs, decoded, strict=True)):
                if self.svc.stopping:
                    for left in msgs[number:]:
                        await left.nak(delay=STOPPING_DELAY)  # another replica, or this one restarted
                    return
                try:
                    await self.consume(raw, event)
                except nats.errors.Error as exc:  # an ack or a dead letter lost: redelivered
                    log.warning("%s: %s: %s; it comes again", self.svc.name, raw.subject, exc)

    async def skip_handled(self, guard: ConsumerGuard, msgs: list[Msg]) -> list[Msg]:
        """``msgs`` without what this stage acked already (a consumer that lost its progress
        delivers the stream again): those are acked, not handled a second time."""
        fresh = []
        for raw in msgs:
            try:
                handled = guard.handled_before(raw.metadata.sequence.stream, raw.metadata.num_delivered)
            except (nats.errors.Error, ValueError):  # not a JetStream delivery: no position to judge
                handled = False
            if not handled:
                fresh.append(raw)
                continue
            metrics.REPLAY_SKIPPED.labels(self.svc.name).inc()
            with contextlib.suppress(nats.errors.Error):  # a lost ack: delivered again, skipped again
                await raw.ack()
        return fresh

    async def prepare(self, decoded: list[StoredEvent | UndecodableEvent]) -> None:
        """Show ``on_batch`` the batch's admitted events before they are handled one by one (the
        ledger's views: one transaction per batch). Advisory: a failure here is logged, and each
        handler still sees its event."""
        assert self.on_batch is not None
        try:
            await self.on_batch([e for e in decoded if not isinstance(e, UndecodableEvent)])
        except Exception:
            log.exception(
                "%s: preparing a batch of %d failed; handling its events one by one", self.svc.name, len(decoded)
            )

    async def consume(self, raw: Msg, event: StoredEvent | UndecodableEvent) -> None:
        if isinstance(event, UndecodableEvent):
            await self.svc.dead_letter(raw, event.code, event.reason)
            await raw.ack()
            return
        self.observe_age(event)
        if self.slots is None:
            await self.handle(raw, event)
            return
        gate = self.slots  # bound here, so the done-callback below releases this very semaphore
        # Concurrent: wait for a free slot (backpressure on the pull loop), then run beside the
        # others; the message is acked or nacked when its own handler ends.
        await gate.acquire()
        if self.svc.stopping:
            gate.release()
            await raw.nak(delay=STOPPING_DELAY)
            return
        task = asyncio.create_task(self.handle(raw, event), name=f"{self.svc.name}-{raw.subject}")
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        task.add_done_callback(lambda _t: gate.release())

    def observe_age(self, event: StoredEvent) -> None:
        with contextlib.suppress(ValueError):
            age = max(0.0, (datetime.now(UTC) - parse_time(event.envelope.occurred_at)).total_seconds())
            metrics.QUEUE_AGE_SECONDS.labels(self.svc.name).observe(age)
            if event.envelope.agent_id:
                agent = metrics.AGENT_LABEL(event.envelope.agent_id)
                metrics.SEGMENT_QUEUE_AGE_SECONDS.labels(self.svc.name, agent).observe(age)

    async def handle(self, raw: Msg, event: StoredEvent) -> None:
        """Run the handler on one admitted event, then ack, or nack for a later redelivery."""
        name = self.svc.name
        started = time.perf_counter()
        self.svc.handling(event, raw)
        try:
            span = {"writ.intent_id": event.envelope.intent_id or "", "writ.service": name}
            with stage_span(f"{name}.{event.type}", raw.headers, **span):
                await self.handler(event, raw)
        except Redeliver as again:
            log.info("%s: %s again in %.2fs: %s", name, raw.subject, again.delay, again.why)
            metrics.REDELIVERIES.labels(name, "scheduled").inc()
            await raw.nak(delay=again.delay)
            return
        except StorageRefused as full:
            # Nothing to fix in the handler: the stream is at its limit. Alert, and try later.
            metrics.REDELIVERIES.labels(name, full.code).inc()
            log.error("%s: %s waits: %s", name, raw.subject, full)
            await raw.nak(delay=STORAGE_RETRY)
            return
        except Exception:
            metrics.REDELIVERIES.labels(name, "error").inc()
            delivered = raw.metadata.num_delivered
            log.exception("%s: handling %s failed (delivery %d); will retry", name, raw.subject, delivered)
            await raw.nak(delay=retry_delay(delivered))
            return
        finally:
            self.svc.handled(event)
        metrics.STAGE_SECONDS.labels(name, event.type).observe(time.perf_counter() - started)
        await raw.ack()


def _decoded(raw: Msg) -> StoredEvent | UndecodableEvent:
    """The message decoded and admitted by the topology, or why it is not a valid Writ event."""
    try:
        return stored(raw)
    except UndecodableEvent as exc:
        return exc
