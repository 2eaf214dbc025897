"""Keeping a service's durable consumer in existence: recreated at once when someone deletes it.

A deleted durable stalls its stage for good (the pull loop asks a consumer that is gone). The bus
lets a service administer only its own consumers (see ``busauth.service_user``), but an operator's
slip can still delete one. The guard hears JetStream's "consumer deleted" advisory and recreates
the consumer at once, with the same settings, from just past the last acknowledged position it saw
(redelivered events are no-ops: every handler folds first); a periodic check covers an advisory
missed while disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from writ_common import metrics

log = logging.getLogger(__name__)

CHECK_INTERVAL = 5.0  # seconds between existence checks (the advisory is the fast path)
CONSUMER_EXISTS = 10148  # JSConsumerNameExistErr: same name, other settings (a replica won the race)


def deleted_advisory(stream: str, durable: str) -> str:
    """Core NATS subject on which JetStream announces that ``durable`` was deleted."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.DELETED.{stream}.{durable}"


class ConsumerGuard:
    """Recreates ``durable`` on ``stream`` (with ``config``) whenever it is found missing."""

    def __init__(
        self, service: str, stream: str, durable: str, config: ConsumerConfig, interval: float = CHECK_INTERVAL
    ) -> None:
        self.service = service
        self.stream = stream
        self.durable = durable
        self.config = config
        self.interval = interval
        self.recreated = 0
        self._floor = 0  # the consumer's ack floor (stream sequence), as last seen
        self._lock = asyncio.Lock()
        self._nc: Client | None = None
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, nc: Client) -> None:
        """Listen for the deletion advisory and check periodically (the first check after ``interval``:
        at start-up the subscriber creates the consumer itself)."""
        self._nc = nc
        self._sub = await nc.subscribe(deleted_advisory(self.stream, self.durable), cb=self._on_deleted)
        self._task = asyncio.create_task(self._watch(), name=f"consumer-guard-{self.durable}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()

    async def _on_deleted(self, _msg: Msg) -> None:
        try:
            await self.ensure()
        except (NatsError, OSError) as exc:
            log.warning("%s: could not recreate consumer %s yet: %s", self.service, self.durable, exc)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.ensure()
            except (NatsError, OSError) as exc:
                log.warning("%s: could not check consumer %s: %s", self.service, self.durable, exc)

    async def ensure(self) -> bool:
        """Recreate the consumer if it is missing; returns True when it did."""
        assert self._nc is not None
        js = self._nc.jetstream()
        async with self._lock:
            try:
                info = await js.consumer_info(self.stream, self.durable)
            except NotFoundError:
                pass
            else:
                self._floor = max(self._floor, info.ack_floor.stream_seq if info.ack_floor else 0)
                return False
            start = self._floor + 1
            config = self.config.evolve(
                durable_name=self.durable,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE if self._floor else DeliverPolicy.ALL,
                opt_start_seq=start if self._floor else None,
            )
            try:
                await js.add_consumer(self.stream, config)
            except APIError as exc:
                if exc.err_code != CONSUMER_EXISTS:
                    raise
                return False  # another replica recreated it first
            self.recreated += 1
            metrics.CONSUMERS_RECREATED.labels(self.service).inc()
            log.warning(
                "%s: consumer %s on %s was deleted; recreated it from stream sequence %d",
                self.service,
                self.durable,
                self.stream,
                start if self._floor else 1,
            )
            return True
