"""The registered servers, as the registry's stream says: folded here, read fresh when asked."""

from __future__ import annotations

from writ_common import events as ev
from writ_common import subjects
from writ_common.catalog import Catalog
from writ_common.service import Service
from writ_executor.redaction import references


class KnownServers:
    """The registry stream folded into a catalog (replayed at start, followed live)."""

    def __init__(self, svc: Service) -> None:
        self.catalog = Catalog()
        self.follower = svc.follow(subjects.REGISTRY_STREAM, self.catalog.apply)

    async def get(self, name: str) -> ev.ServerRegistered | None:
        """The server named ``name``; a name not known yet is looked up once the catalog has caught up."""
        if name not in self.catalog.servers:
            await self.follower.ensure_fresh()
        return self.catalog.servers.get(name)

    async def all(self) -> list[ev.ServerRegistered]:
        """Every registered server, by name, as of now."""
        await self.follower.ensure_fresh()
        return [server for _name, server in sorted(self.catalog.servers.items())]

    async def referring_to(self, secret: str) -> list[str]:
        """The names of the servers whose configuration refers to ``secret``."""
        await self.follower.ensure_fresh()
        return sorted(s.name for s in self.catalog.servers.values() if secret in references(s))

    def __len__(self) -> int:
        return len(self.catalog.servers)
