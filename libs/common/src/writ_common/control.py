"""Following a control stream (agents, servers, policies) into an in-memory view."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from writ_common.bus import stored
from writ_common.envelope import StoredEvent, UndecodableEvent

log = logging.getLogger(__name__)


class ControlFollower:
    """Replays a whole control stream at start, then follows it live.

    The view is rebuilt from the log on every start: the process keeps nothing of its own.
    """

    def __init__(self, js: JetStreamContext, stream: str, apply: Callable[[StoredEvent], None]) -> None:
        self._js = js
        self._stream = stream
        self._apply = apply
        self._applied = 0
        self._changed = asyncio.Condition()

    @property
    def applied_seq(self) -> int:
        return self._applied

    async def start(self) -> None:
        info = await self._js.stream_info(self._stream)
        subject = info.config.subjects[0] if info.config.subjects else ">"
        await self._js.subscribe(
            subject, stream=self._stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, cb=self._on_msg
        )
        await self.ensure_fresh()

    async def _on_msg(self, msg: Msg) -> None:
        try:
            self._apply(stored(msg))
        except UndecodableEvent as exc:
            log.warning("control event skipped on %s: %s", msg.subject, exc)
        async with self._changed:
            self._applied = msg.metadata.sequence.stream
            self._changed.notify_all()

    async def ensure_fresh(self, timeout: float = 5.0) -> bool:
        """Wait until everything in the stream right now has been applied.

        Called before answering "unknown" so a registration made a moment ago on another
        replica is never missed. Returns False if the view could not catch up in time.
        """
        target = (await self._js.stream_info(self._stream)).state.last_seq
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._applied >= target), timeout)
            except TimeoutError:
                return False
        return True
