"""A step the executor takes every few seconds while it runs (its control loops)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from writ_common.service import Service

log = logging.getLogger(__name__)


class Ticker:
    """Runs ``step`` every ``period`` seconds from the service's start to its stop; a step that fails
    is logged and the next tick tries again. ``enabled`` False: never runs."""

    def __init__(
        self, svc: Service, name: str, step: Callable[[], Awaitable[None]], *, period: float, enabled: bool
    ) -> None:
        self.svc = svc
        self.name = name
        self.step = step
        self.period = period
        self.enabled = enabled
        self.tasks: list[asyncio.Task[None]] = []

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.step()
            except Exception:
                log.exception("executor: the %s failed this tick; trying again", self.name)

    async def start(self) -> None:
        if self.enabled:
            self.tasks.append(asyncio.create_task(self.loop(), name=self.name))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()

    def wire(self) -> None:
        self.svc.on_startup(self.start)
        self.svc.on_shutdown(self.stop)
