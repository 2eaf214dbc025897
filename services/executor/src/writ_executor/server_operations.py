"""What the executor does with tool servers beside calls: list a server's tools for the registry
(its configuration may hold secrets only the executor has), list what every server offers for the
gateway, and have the registry rediscover a server that says its tools changed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from mcp.shared.exceptions import MCPError

from writ_common import commands
from writ_common import events as ev
from writ_common.commands import CommandError, granted
from writ_common.errors import Refusal
from writ_common.mcp_client import discover, root_cause
from writ_common.service import Service
from writ_executor.known_servers import KnownServers
from writ_executor.redaction import resolve
from writ_executor.secret_commands import Secrets, store_call
from writ_executor.sessions import CallInterrupted, ServerUnavailable, SessionPool

log = logging.getLogger(__name__)

DISCOVERY_TIMEOUT = 60.0
LIST_TIMEOUT = 10.0  # seconds one server has to answer a listing for the gateway
REFRESH_TIMEOUT = 75.0  # the registry allows discovery 60s


class Discover(msgspec.Struct, kw_only=True):
    server: ev.ServerRegistered


class ListOffered(msgspec.Struct, kw_only=True):
    method: Literal["resources/list", "resources/templates/list", "prompts/list"]


class ToolRefresh:
    """A server sent ``notifications/tools/list_changed``: the registry rediscovers its tools, so a
    changed definition becomes a new version in quarantine before anyone calls it. One refresh per
    server at a time; told again meanwhile, it refreshes once more after."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.running: dict[str, asyncio.Task[None]] = {}
        self.stale: set[str] = set()  # told again while a refresh was running

    def on_tools_changed(self, name: str) -> None:
        if name in self.running and not self.running[name].done():
            self.stale.add(name)
            return
        self.running[name] = asyncio.create_task(self.refresh(name), name=f"refresh-{name}")

    async def refresh(self, name: str) -> None:
        while True:
            self.stale.discard(name)
            try:
                reply = await commands.call(
                    self.svc.nc, "registry", "refresh_server", {"name": name}, timeout=REFRESH_TIMEOUT
                )
                log.warning(
                    "executor: %s says its tools changed; rediscovered, in quarantine: %s",
                    name,
                    ", ".join(reply.get("quarantined", [])) or "nothing",
                )
            except Exception as exc:
                log.warning("executor: %s says its tools changed, but the registry could not refresh: %s", name, exc)
            if name not in self.stale:
                return

    async def cancel(self) -> None:
        for task in self.running.values():
            task.cancel()


class ServerOperations:
    """The ``discover`` (for the registry) and ``list_offered`` (for the gateway) commands."""

    def __init__(
        self,
        svc: Service,
        servers: KnownServers,
        secrets: Secrets,
        pool: SessionPool,
        *,
        on_listed: Callable[[str, str, list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.svc = svc
        self.servers = servers
        self.secrets = secrets
        self.pool = pool
        self.on_listed = on_listed  # each server's listing as answered (a change is a list change)

    async def discover_tools(self, body: dict[str, Any]) -> Any:
        """For the registry: list the tools of a server whose configuration refers to secrets."""
        server = msgspec.convert(body, Discover).server
        known = store_call(self.secrets.current)
        redactor = self.secrets.redactor(known)
        resolved = granted(resolve(server, known))
        try:
            with self.secrets.stderr() as errlog:
                tools = await asyncio.wait_for(
                    discover(resolved, scrub=redactor.value, errlog=errlog), DISCOVERY_TIMEOUT
                )
        except Exception as exc:
            cause = root_cause(exc)
            raise CommandError(
                "discovery_failed",
                redactor.text(f"could not list the tools of {server.name!r} over MCP: {type(cause).__name__}: {cause}"),
            ) from None
        return msgspec.to_builtins(tools)

    async def list_offered(self, body: dict[str, Any]) -> Any:
        """For the gateway (an agent may ask): what every registered server lists for ``method``
        (resources, resource templates, prompts), as it lists it, scrubbed of secret values. A server
        that cannot be reached, or offers none, lists nothing (and says why under ``error``)."""
        method = msgspec.convert(body, ListOffered).method
        servers = await self.servers.all()
        return await asyncio.gather(*(self.listing(server, method) for server in servers))

    async def listing(self, server: ev.ServerRegistered, method: str) -> dict[str, Any]:
        known = self.secrets.current_or_none()
        redactor = self.secrets.redactor(known)
        resolved = resolve(server, known)
        if isinstance(resolved, Refusal):
            return {"server": server.name, "items": [], "error": str(resolved)}
        try:
            items = await asyncio.wait_for(self.pool.listing(resolved, method, timeout=LIST_TIMEOUT), LIST_TIMEOUT)
        except TimeoutError:
            return {"server": server.name, "items": [], "error": f"no answer within {LIST_TIMEOUT:g}s"}
        except (ServerUnavailable, CallInterrupted, MCPError) as exc:
            return {"server": server.name, "items": [], "error": redactor.text(str(exc))}
        scrubbed = redactor.value(items)
        if self.on_listed is not None:
            self.on_listed(server.name, method, scrubbed)
        return {"server": server.name, "items": scrubbed}

    def wire(self) -> None:
        self.svc.command("discover", self.discover_tools)
        self.svc.command("list_offered", self.list_offered)
