"""Following a control stream (agents, servers, policies) into an in-memory view."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from writ_common import metrics
from writ_common.bus import pages_after, stored
from writ_common.envelope import StoredEvent, UndecodableEvent

log = logging.getLogger(__name__)

POLL_INTERVAL = 2.0


class ControlFollower:
    """Replays a whole control stream at start, then follows it.

    Reads are gap-free Direct Gets from the last applied sequence, so the view is exact even
    across nats-server restarts; a core subscription on the stream's subjects is only a nudge to
    read now, and a slow poll covers a missed nudge. The process keeps nothing of its own.
    """

    def __init__(self, stream: str, apply: Callable[[StoredEvent], None]) -> None:
        self._nc: Client | None = None
        self._stream = stream
        self._applies = [apply]  # every view folded from this stream, each told every event in order
        self._applied = 0
        self._subject = ">"
        self._lock = asyncio.Lock()
        self._nudge: Subscription | None = None
        self._poller: asyncio.Task[None] | None = None

    def also(self, apply: Callable[[StoredEvent], None]) -> None:
        """Fold another view from the same reads (before ``start``: it sees the replay too)."""
        assert self._nc is None, "add a view before the follower starts"
        self._applies.append(apply)

    @property
    def applied_seq(self) -> int:
        return self._applied

    async def start(self, nc: Client) -> None:
        """Replay the stream, then follow it on ``nc``."""
        self._nc = nc
        info = await nc.jetstream().stream_info(self._stream)
        self._subject = info.config.subjects[0] if info.config.subjects else ">"
        await self.catch_up()
        self._nudge = await nc.subscribe(self._subject, cb=self._on_nudge)
        self._poller = asyncio.create_task(self._poll(), name=f"follow-{self._stream}")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self._nudge is not None:
            with contextlib.suppress(Exception):
                await self._nudge.unsubscribe()

    async def catch_up(self) -> None:
        """Apply every control event after the last one applied, in stream order."""
        assert self._nc is not None, "start() the follower first"
        async with self._lock:
            async for msgs in pages_after(self._nc, self._stream, self._subject, self._applied):
                for msg in msgs:
                    self._apply_one(msg)

    def _apply_one(self, msg: Msg) -> None:
        seq = int((msg.headers or {})["Nats-Sequence"])
        self._applied = seq
        try:
            event = stored(msg)
        except UndecodableEvent as exc:
            metrics.SKIPPED_EVENTS.labels(self._stream, exc.code).inc()
            log.warning("control event %s:%d skipped: %s", self._stream, seq, exc)
            return
        for apply in self._applies:
            try:
                apply(event)
            except Exception:
                # One event a view cannot take must not stop it (or another view) for every event after.
                metrics.SKIPPED_EVENTS.labels(self._stream, "unappliable").inc()
                log.exception("control event %s:%d could not be applied; skipped", self._stream, seq)

    async def _on_nudge(self, _msg: Msg) -> None:
        with contextlib.suppress(Exception):
            await self.catch_up()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                await self.catch_up()
            except Exception as exc:  # the server may be restarting; the next poll retries
                log.debug("follow %s: %s", self._stream, exc)

    async def ensure_fresh(self, timeout: float = 5.0) -> bool:
        """Catch up with everything in the stream right now.

        Called before answering "unknown" so a registration made a moment ago on another
        replica is never missed. Returns False if the stream could not be read in time.
        """
        try:
            await asyncio.wait_for(self.catch_up(), timeout)
        except Exception as exc:
            log.warning("follow %s: could not catch up: %s", self._stream, exc)
            return False
        return True
