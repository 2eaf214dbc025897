"""The calls this executor replica is running, and their agents' cancel requests.

Every replica hears every ``intent.cancel_requested`` on core NATS (not a durable consumer: only
the replica running the call can stop it, and a replica that is not running it has nothing to
do; the next stage to act on an intent not running finds the request in its history). A request
for a call running here is believed once the intent's history holds it (a core message the
stream refused would otherwise stop a call with nothing recorded); then the call's task is
cancelled, which makes the ``mcp`` SDK send the server ``notifications/cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from writ_common import cancel_requests
from writ_common import events as ev

T = TypeVar("T")


@dataclass(slots=True)
class Running:
    """One call running here: set ``stop`` (with the agent's ``request``) to cancel it."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    request: ev.IntentCancelRequested | None = None


class RunningCalls:
    """Calls in flight on this replica by (agent, intent), and the subscription that stops them."""

    def __init__(self, nc: Callable[[], Client]) -> None:
        self._nc = nc
        self._running: dict[tuple[str, str], Running] = {}
        self._sub: Subscription | None = None

    @contextlib.contextmanager
    def track(self, agent_id: str, intent_id: str) -> Iterator[Running]:
        """While the body runs (from before ``execution.started`` is appended to the outcome), a
        cancel request for this intent stops it."""
        running = self._running[(agent_id, intent_id)] = Running()
        try:
            yield running
        finally:
            self._running.pop((agent_id, intent_id), None)

    async def start(self) -> None:
        self._sub = await self._nc().subscribe(cancel_requests.SUBJECT, cb=self.on_request)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def on_request(self, msg: Msg) -> None:
        names = cancel_requests.named(msg.subject)
        running = self._running.get(names) if names else None
        if running is None or running.stop.is_set():
            return  # not running here: nothing to stop (most requests, on most replicas)
        view = await cancel_requests.confirmed(self._nc(), msg)
        if view is not None and view.cancel_requested is not None:
            running.request = view.cancel_requested
            running.stop.set()


async def until_stopped(call: Awaitable[T], stop: asyncio.Event) -> tuple[T | None, bool]:
    """Run ``call`` until it ends or ``stop`` is set. Returns its result and False, or (None, True)
    when it was stopped: its task is cancelled and has ended (the ``mcp`` SDK sends a request it
    abandons ``notifications/cancelled`` before it lets go). A call that ended on its own just
    as it was stopped keeps its result."""
    task = asyncio.ensure_future(call)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done() and not stop.is_set():
            task.cancel()  # we are cancelled ourselves (a stop of the executor): so is the call
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
    if task.cancelled():
        return None, True
    return task.result(), False
