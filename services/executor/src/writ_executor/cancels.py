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
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from writ_common import cancel_requests
from writ_common import events as ev

T = TypeVar("T")


@dataclass(slots=True)
class Running:
    """One call running here; :meth:`stop` (with the agent's ``request``) cancels it."""

    request: ev.IntentCancelRequested | None = None  # set: stopped at the agent's request
    task: asyncio.Future[Any] | None = None  # the call, once it is made

    def stop(self, request: ev.IntentCancelRequested) -> None:
        self.request = request
        if self.task is not None:
            self.task.cancel()  # a call already ended is not changed


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
        if running is None or running.request is not None:
            return  # not running here: nothing to stop (most requests, on most replicas)
        view = await cancel_requests.confirmed(self._nc(), msg)
        if view is not None and view.cancel_requested is not None:
            running.stop(view.cancel_requested)


async def until_stopped(call: Awaitable[T], running: Running) -> tuple[T | None, bool]:
    """Run ``call`` as ``running``'s task, until it ends or is stopped. Returns its result and
    False, or (None, True) when it was stopped: its task was cancelled and has ended (the ``mcp``
    SDK sends a request it abandons ``notifications/cancelled`` before it lets go). A call that
    ended on its own just as it was stopped keeps its result; a cancellation of our own (a stop
    of the executor) cancels the call too, and goes on."""
    task = running.task = asyncio.ensure_future(call)
    try:
        return await task, False
    except asyncio.CancelledError:
        ours = asyncio.current_task()
        if running.request is None or not task.cancelled() or (ours is not None and ours.cancelling()):
            raise
        return None, True
