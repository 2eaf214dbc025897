"""A standing pull request per durable consumer, topped up as events are taken (as nats.go's
``Consume`` does): one request per half batch, not a probe and a wait per fetch.

nats-py's ``fetch`` first asks with ``no_wait`` (a 404 when nothing is there), then asks again and
waits: two requests and a status reply for every fetch of an idle consumer, on every stage, for
every event. Here one request for ``batch`` events stays open at the server for ``EXPIRES``
seconds; the server sends events as they come and a heartbeat while it waits, and the request is
renewed when fewer than half a batch is outstanding. A request the server no longer holds (its
expiry, a consumer deleted or recreated, a reconnect, a server restart) is noticed by its status
reply or by missing heartbeats, and asked again.
"""

from __future__ import annotations

import asyncio
import json
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

EXPIRES = 10.0  # seconds the server holds one pull request
HEARTBEAT = 2.0  # seconds between the server's idle heartbeats while it holds one
HEARD_WITHIN = 2 * HEARTBEAT + 1.0  # silence after which an outstanding request is taken as lost


class Puller:
    """Events of the durable ``durable`` on ``stream``, at most about ``batch`` ahead of use."""

    def __init__(self, nc: Client, stream: str, durable: str, batch: int) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._batch = batch
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._outstanding = 0  # asked for and not yet delivered (as far as we know)
        self._heard = time.monotonic()
        self._inbox = ""
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)
        await self._top_up()

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def next_batch(self, timeout: float) -> list[Msg]:
        """The events delivered and not yet taken, in order: waits up to ``timeout`` for the first.

        Raises:
            TimeoutError: none came within ``timeout`` (the request is renewed if it was lost).
        """
        try:
            first = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            if self._outstanding and time.monotonic() - self._heard > HEARD_WITHIN:
                self._outstanding = 0  # no event, status or heartbeat for too long: ask afresh
            await self._top_up()
            raise
        msgs = [first]
        while not self._queue.empty():
            msgs.append(self._queue.get_nowait())
        await self._top_up()
        return msgs

    async def _top_up(self) -> None:
        """Ask for more when no more than half a batch is outstanding or waiting to be taken."""
        ahead = self._outstanding + self._queue.qsize()
        if ahead * 2 > self._batch:
            return
        want = self._batch - ahead
        request = {"batch": want, "expires": int(EXPIRES * 1e9), "idle_heartbeat": int(HEARTBEAT * 1e9)}
        await self._nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)
        self._outstanding += want
        self._heard = time.monotonic()

    async def _on_msg(self, msg: Msg) -> None:
        self._heard = time.monotonic()
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is None:
            self._outstanding = max(0, self._outstanding - 1)
            self._queue.put_nowait(msg)
            return
        if status == "100":
            return  # an idle heartbeat: the request is still held
        # 408 (expired), 409 (consumer deleted, leadership changed, too many requests), 404,
        # 503 (no consumer or stream): the request ended. Its unfilled part, when the server says.
        left = headers.get("Nats-Pending-Messages")
        self._outstanding = max(0, self._outstanding - int(left)) if left and left.isdigit() else 0
        if status == "408":
            await self._top_up()  # expired as planned: ask again at once (other ends: on the next wait)
