"""Keeping a service's durable consumer in existence and its progress: recreated at once when
someone deletes it, moved back to where it was when its progress is lost.

A deleted durable stalls its stage for good (the pull loop asks a consumer that is gone). The bus
lets a service administer only its own consumers (see ``busauth.service_user``), but an operator's
slip can still delete one. The guard hears JetStream's "consumer deleted" advisory and recreates
the consumer at once, with the same settings, from just past the last acknowledged position it saw
(redelivered events are no-ops: every handler folds first); a periodic check covers an advisory
missed while disconnected.

A consumer kept on one node (``WRIT_CONSUMER_REPLICAS=1``) loses its progress when that node is
lost for good: once an operator removes the node (``writ bus remove-node``), JetStream places the
consumer on another node with no progress at all, and it would deliver the whole stream again. The
guard hears the new leader's election, sees an ack floor below the one it saw, and resets the
consumer (``$JS.API.CONSUMER.RESET``, nats-server 2.14+) to just past that floor. Until then, the
stage acks what such a consumer delivers at or below that floor without handling it again. The
floor is also kept in the consumer's own metadata (at most every ``KEEP_FLOOR_EVERY`` seconds),
which the cluster's meta layer keeps across the re-placement: a service restarted while the node
was down, which has seen no floor of its own yet, resets from that one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from writ_common import metrics

log = logging.getLogger(__name__)

CHECK_INTERVAL = 5.0  # seconds between existence checks (the advisory is the fast path)
CHECK_TIMEOUT = 2.0  # a check that waits longer holds back the next (an advisory's) while its node is down
CONSUMER_EXISTS = 10148  # JSConsumerNameExistErr: same name, other settings (a replica won the race)
FLOOR_KEY = "writ_ack_floor"  # consumer metadata: an ack floor its service saw
RESET_SETTLES = 2.0  # seconds after a reset in which deliveries below it are ones sent before it
KEEP_FLOOR_EVERY = 30.0  # seconds between writes of it (each a meta-layer proposal on a cluster)


def deleted_advisory(stream: str, durable: str) -> str:
    """Core NATS subject on which JetStream announces that ``durable`` was deleted."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.DELETED.{stream}.{durable}"


def leader_elected_advisory(stream: str, durable: str) -> str:
    """Core NATS subject on which JetStream announces that ``durable`` has a new leader (also when
    it was placed on another node after its own was removed)."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{stream}.{durable}"


def reset_subject(stream: str, durable: str) -> str:
    """JetStream API subject that moves ``durable`` to a stream sequence (ADR-60)."""
    return f"$JS.API.CONSUMER.RESET.{stream}.{durable}"


class ConsumerGuard:
    """Recreates ``durable`` on ``stream`` (with ``config``) whenever it is found missing."""

    def __init__(
        self,
        service: str,
        stream: str,
        durable: str,
        config: ConsumerConfig,
        *,
        interval: float = CHECK_INTERVAL,
        keep_floor_every: float = KEEP_FLOOR_EVERY,
    ) -> None:
        self.service = service
        self.stream = stream
        self.durable = durable
        self.config = config
        self.interval = interval
        self.recreated = 0
        self.restored = 0
        self.keep_floor_every = keep_floor_every
        self._floor = 0  # the consumer's ack floor (stream sequence), as last seen
        self._kept = 0  # the floor last found or written in the consumer's metadata
        self._kept_at = -math.inf
        self._lock = asyncio.Lock()
        self._nc: Client | None = None
        self._subs: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None
        self._check: asyncio.Task[None] | None = None
        self._stopped = False
        self._reset_at = -math.inf

    async def start(self, nc: Client) -> None:
        """Listen for the advisories and check at once, then periodically: a consumer that lost its
        progress while this service was down is moved back before it delivers much again (at
        start-up a missing consumer is left to the subscriber, which creates it)."""
        self._nc = nc
        self._subs = [
            await nc.subscribe(deleted_advisory(self.stream, self.durable), cb=self._on_advisory),
            await nc.subscribe(leader_elected_advisory(self.stream, self.durable), cb=self._on_advisory),
        ]
        self._task = asyncio.create_task(self._watch(), name=f"consumer-guard-{self.durable}")

    async def stop(self) -> None:
        self._stopped = True
        tasks = {task for task in (self._task, self._check) if task is not None}
        for _ in range(3):
            if not tasks:
                break
            # A cancel that lands as a request completes may be lost inside nats-py's wait_for
            # (Python 3.11): the task then goes on to its next wait, where another one lands.
            for task in tasks:
                task.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=1.0)
        for sub in self._subs:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    def handled_before(self, stream_seq: int, num_delivered: int) -> bool:
        """Whether a delivery the pull loop got is one this stage acked already: a first delivery at
        or below the ack floor seen, which only a consumer that lost its progress makes. Then the
        consumer is checked now, not at the next tick, and moved back to its progress."""
        if num_delivered != 1 or stream_seq > self._floor:
            return False
        if not self._just_reset() and (self._check is None or self._check.done()):
            # The delivery itself is the proof: reset at once (a check by consumer info could be
            # overtaken by the replay, which acks without handling, and so never see it).
            self._check = asyncio.create_task(
                self._restore(f"delivered stream sequence {stream_seq} anew"), name=f"consumer-reset-{self.durable}"
            )
        return True

    def _just_reset(self) -> bool:
        """A reset landed moments ago: deliveries below it were on their way before it."""
        return time.monotonic() - self._reset_at <= RESET_SETTLES

    async def _restore(self, why: str) -> None:
        try:
            async with self._lock:
                if self._just_reset():
                    return  # a check reset it meanwhile (the new leader's advisory): once is enough
                await self._reset(why)
        except (NatsError, OSError) as exc:  # the next such delivery tries again
            log.warning("%s: could not reset consumer %s yet: %s", self.service, self.durable, exc)

    async def _on_advisory(self, _msg: Msg) -> None:
        try:
            await self.ensure()
        except (NatsError, OSError) as exc:
            log.warning("%s: could not check consumer %s yet: %s", self.service, self.durable, exc)

    async def _watch(self) -> None:
        first = True
        while not self._stopped:
            try:
                await self.ensure(create=not first)
            except (NatsError, OSError) as exc:
                log.warning("%s: could not check consumer %s: %s", self.service, self.durable, exc)
            first = False
            if not self._stopped:
                await asyncio.sleep(self.interval)

    async def ensure(self, *, create: bool = True) -> bool:
        """Recreate the consumer if it is missing (unless not ``create``), or move it back to the ack
        floor it had if it lost its progress; returns True when it did either."""
        assert self._nc is not None
        js = self._nc.jetstream()
        async with self._lock:
            try:
                info = await js.consumer_info(self.stream, self.durable, timeout=CHECK_TIMEOUT)
            except NotFoundError:
                if not create:
                    return False
            else:
                self._kept = max(self._kept, kept_floor(info.config))
                self._floor = max(self._floor, self._kept)  # seen by this service before a restart
                floor = info.ack_floor.stream_seq if info.ack_floor else 0
                if floor >= self._floor:
                    self._floor = floor
                    await self._keep_floor(info.config)
                    return False
                # An ack floor only moves forward: one behind what was seen is progress lost
                # (a consumer placed anew on another node). Every event up to the seen floor was
                # handled; delivering them again would only replay the stream.
                await self._reset(f"ack floor {floor}")
                return True
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

    async def _reset(self, why: str) -> None:
        assert self._nc is not None
        start = self._floor + 1
        reply = await self._nc.request(
            reset_subject(self.stream, self.durable), json.dumps({"seq": start}).encode(), timeout=5.0
        )
        answer = json.loads(reply.data)
        if "error" in answer:
            APIError.from_error(answer["error"])  # raises
        self.restored += 1
        self._reset_at = time.monotonic()
        metrics.CONSUMERS_RESTORED.labels(self.service).inc()
        log.warning(
            "%s: consumer %s on %s lost its progress (%s; its ack floor was %d); reset it to stream sequence %d",
            self.service,
            self.durable,
            self.stream,
            why,
            self._floor,
            start,
        )

    async def _keep_floor(self, config: ConsumerConfig) -> None:
        """Write the floor into the consumer's metadata, if it moved and a while has passed."""
        assert self._nc is not None
        now = time.monotonic()
        if self._floor <= self._kept or now - self._kept_at < self.keep_floor_every:
            return
        self._kept_at = now
        # The consumer as it is (a metadata change is an update), without the server's own keys.
        metadata = {k: v for k, v in (config.metadata or {}).items() if not k.startswith("_nats")}
        try:
            await self._nc.jetstream().add_consumer(
                self.stream, config.evolve(metadata={**metadata, FLOOR_KEY: str(self._floor)}), timeout=CHECK_TIMEOUT
            )
        except (NatsError, OSError) as exc:  # the next check tries again
            log.warning("%s: could not keep consumer %s's floor: %s", self.service, self.durable, exc)
            return
        self._kept = self._floor


def kept_floor(config: ConsumerConfig) -> int:
    """The ack floor kept in a consumer's metadata (0: none, or not a number)."""
    try:
        return max(0, int((config.metadata or {}).get(FLOOR_KEY, "0")))
    except ValueError:
        return 0
