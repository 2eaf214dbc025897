"""Which intents are still open, and until when: the sweeper's index, followed from the log.

Only ``submitted`` and terminal events are read, through an ephemeral pull consumer on the
intents stream. A consumer is served by the stream leader, in stream order: the index never
misses an intent because a replica was behind (a Direct Get could). A gap in the consumer's
sequence (the consumer lost with a server) recreates it from the next stream sequence, as an
ordered consumer does. The process keeps nothing the log cannot give back.
"""

from __future__ import annotations

import contextlib
import logging

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from writ_common import events as ev
from writ_common import subjects
from writ_common.bus import stored
from writ_common.envelope import StoredEvent, UndecodableEvent

log = logging.getLogger(__name__)

FETCH = 512
INACTIVE_SECONDS = 120.0  # the server drops an abandoned index consumer after this long
FOLLOWED_TYPES = ("intent.submitted", *sorted(ev.TERMINAL_TYPES))


class OpenIntents:
    """intent id -> its ``submitted`` event, for every intent with no terminal event yet."""

    def __init__(self) -> None:
        self.open: dict[str, StoredEvent] = {}
        self._next_seq = 1
        self._consumer_seq = 0
        self._sub: JetStreamContext.PullSubscription | None = None

    async def catch_up(self, js: JetStreamContext) -> None:
        """Apply every submitted and terminal event stored since the last call."""
        try:
            if self._sub is None:
                self._sub = await self._subscribe(js)
            while True:
                try:
                    msgs = await self._sub.fetch(FETCH, timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    return  # nothing new
                for msg in msgs:
                    meta = msg.metadata
                    if meta.sequence.consumer != self._consumer_seq + 1:
                        raise _Gap(f"consumer sequence {meta.sequence.consumer} after {self._consumer_seq}")
                    self._consumer_seq = meta.sequence.consumer
                    self._apply(msg)
                    self._next_seq = meta.sequence.stream + 1
                if len(msgs) < FETCH:
                    return
        except (_Gap, nats.errors.Error) as exc:
            log.info("open intents: following again from seq %d (%s)", self._next_seq, exc)
            await self.stop()

    def _apply(self, msg: Msg) -> None:
        try:
            event = stored(msg)
        except UndecodableEvent:
            return  # forged or malformed: it opens and closes nothing
        intent_id = event.envelope.intent_id or ""
        if event.type == "intent.submitted":
            self.open.setdefault(intent_id, event)
        else:
            self.open.pop(intent_id, None)

    async def _subscribe(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        self._consumer_seq = 0
        config = ConsumerConfig(
            filter_subjects=[subjects.intents_of_type(t) for t in FOLLOWED_TYPES],
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._next_seq,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=INACTIVE_SECONDS,
            mem_storage=True,
        )
        return await js.pull_subscribe("", stream=subjects.INTENTS_STREAM, config=config)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        self._sub = None


class _Gap(Exception):
    pass
