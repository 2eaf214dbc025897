"""The Writ account on the bus: user JWTs for registered bus keys, and every revocation pushed to
every node of the cluster (at each revocation, at start, and again by a periodic check)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from writ_common.busauth import BusUpdateFailed, BusUser, Issuer, push_revocations, reconcile_revocations
from writ_common.commands import CommandError
from writ_common.control import ControlFollower
from writ_common.settings import WritSettings
from writ_identity.domain import Agent, bus_revocations

log = logging.getLogger(__name__)


class BusAccount:
    """The account's issuer (none on an open bus), the agents whose revocations it carries, and
    the resync task."""

    def __init__(self, settings: WritSettings, agents: Mapping[str, Agent], follower: ControlFollower) -> None:
        self.settings = settings
        self.agents = agents  # identity's folded agents, read (never written) here
        self.follower = follower
        self.issuer = Issuer.load(settings.nats_issuer_file) if settings.nats_issuer_file else None
        self.resync: asyncio.Task[None] | None = None

    def user_jwt(self, who: str, make: Callable[[], BusUser]) -> dict[str, str]:
        """``{"bus_jwt": ...}``: the user JWT (public claims, no secret) for a registered key, by
        which the cluster lets it in with its allow lists at once; nothing on an open bus.

        Raises:
            CommandError: ``invalid_bus_user``: a name that cannot be a subject token.
        """
        if self.issuer is None:
            return {}
        try:
            return {"bus_jwt": self.issuer.user_jwt(make())}
        except ValueError as exc:
            raise CommandError("invalid_bus_user", f"{who} cannot be a bus user: {exc}") from exc

    async def push(self) -> None:
        """Give the cluster the Writ account with every revoked agent's bus key listed: each node
        drops its connections and refuses it from then on. No restart, no file on any server.

        Raises:
            CommandError: ``bus_update_failed``: the cluster did not take it (the revocation is
                recorded and is pushed again at the next revocation or start).
        """
        if self.issuer is None:
            return
        await self.follower.ensure_fresh()
        try:
            pushed = await push_revocations(self.settings.nats_servers(), self.issuer, bus_revocations(self.agents))
        except BusUpdateFailed as exc:
            log.error("identity: %s", exc.message)
            raise CommandError(exc.code, exc.message) from exc
        log.info("identity: bus account pushed (%d revoked bus users)", len(pushed))

    async def start(self) -> None:
        """Revocations recorded while the cluster could not take them reach it now. Serve anyway:
        the previous account stays in force, and the next revocation pushes again."""
        with contextlib.suppress(CommandError):
            await self.push()
        if self.issuer is not None and self.settings.bus_resync_seconds > 0:
            self.resync = asyncio.create_task(self.resync_loop(self.issuer), name="identity-bus-resync")

    async def stop(self) -> None:
        if self.resync is not None:
            self.resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.resync

    async def resync_loop(self, issuer: Issuer) -> None:
        """Every node holds every revocation: one that was down when an agent was revoked (or
        restarted from its preloaded account) gets the account again within a period."""
        while True:
            await asyncio.sleep(self.settings.bus_resync_seconds)
            try:
                await self.follower.ensure_fresh()
                if await reconcile_revocations(self.settings.nats_servers(), issuer, bus_revocations(self.agents)):
                    log.info("identity: a bus node lacked a revocation; the account was pushed again")
            except Exception:
                log.exception("identity: checking the bus nodes' revocations failed; the next period tries again")
