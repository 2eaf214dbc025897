"""Registry service wiring: consumes intent.authenticated, registers and discovers tool servers."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import msgspec
from nats.aio.msg import Msg

from writ_common import commands, subjects
from writ_common import events as ev
from writ_common.bus import StaleAppend
from writ_common.catalog import Catalog
from writ_common.commands import CommandError, granted, refuse_if
from writ_common.digest import sha256_digest
from writ_common.envelope import StoredEvent
from writ_common.fold import IntentView
from writ_common.mcp_client import discover, root_cause
from writ_common.service import Service
from writ_common.settings import WritSettings
from writ_registry.domain import (
    Validators,
    accepted_tool,
    describe_target,
    generation_suffix,
    needs_plan,
    plan,
    quarantined,
    registered,
    registration_refusal,
    server_refusal,
)

DISCOVERY_TIMEOUT = 60.0


class AddServer(msgspec.Struct, kw_only=True):
    name: str
    transport: Literal["stdio", "http"] = "stdio"
    command: str | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    url: str | None = None
    headers: dict[str, str] = {}
    idempotency_header: str | None = None
    max_concurrency: int | None = None
    secret_env: dict[str, str] = {}  # variable -> secret name (stdio)
    secret_headers: dict[str, str] = {}  # header -> secret name (http)


class RefreshServer(msgspec.Struct, kw_only=True):
    name: str


class RemoveServer(msgspec.Struct, kw_only=True):
    name: str
    removed_by: str = ""
    reason: str = ""


class AcceptTool(msgspec.Struct, kw_only=True):
    server: str
    tool: str
    accepted_by: str = ""


class ListTools(msgspec.Struct, kw_only=True):
    server: str | None = None


class Registry:
    """The registry's state, the catalog of servers and tools folded from its stream (with the
    compiled input-schema validators), and its handlers: planning intents and the server/tool commands."""

    def __init__(self, svc: Service, settings: WritSettings) -> None:
        self.svc = svc
        self.settings = settings
        self.catalog = Catalog()
        self.validators = Validators()
        self.args_key = settings.resolved_args_digest_key()
        self.follower = svc.follow(subjects.REGISTRY_STREAM, self.catalog.apply)

    def wire(self) -> None:
        """Every subscription and command of the service, in one place."""
        svc = self.svc
        svc.consume_intents(subjects.intents_of_type("intent.authenticated"), self.on_authenticated)
        svc.command("add_server", self.add_server)
        svc.command("remove_server", self.remove_server)
        svc.command("list_servers", self.list_servers)
        svc.command("list_tools", self.list_tools)
        svc.command("set_override", self.set_override)
        svc.command("refresh_server", self.refresh_server)
        svc.command("accept_tool", self.accept_tool)
        svc.command("ping", self.ping)

    def plan(self, view: IntentView) -> ev.IntentPlanned | ev.IntentRejected:
        return plan(
            view,
            self.catalog,
            self.validators,
            args_key=self.args_key,
            max_argument_bytes=self.settings.max_argument_bytes,
        )

    async def on_authenticated(self, trigger: StoredEvent, _raw: Msg) -> None:
        async def decide(view: IntentView) -> list[ev.Payload]:
            if not needs_plan(view):
                return []
            decision = self.plan(view)
            unknown = isinstance(decision, ev.IntentRejected) and decision.code == "unknown_tool"
            # A server registered a moment ago may not be folded yet: catch up once, then decide.
            if unknown and await self.follower.ensure_fresh():
                decision = self.plan(view)
            return [decision]

        await self.svc.run_stage(trigger, "plan", decide)

    async def add_server(self, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, AddServer)
        server = msgspec.convert(msgspec.to_builtins(cmd), ev.ServerRegistered)
        refuse_if(server_refusal(server))
        await self.follower.ensure_fresh()
        refuse_if(registration_refusal(self.catalog, server))
        existing = self.catalog.servers.get(cmd.name)
        tools = await discover_tools(self.svc, server)
        config_digest = sha256_digest(msgspec.to_builtins(server))
        # A name registered again after a removal is a new generation: its own message ids, and
        # fenced on the last registration of the name rather than on an empty subject.
        suffix = generation_suffix(self.catalog, cmd.name)
        try:
            await self.svc.append_control(
                subjects.server_subject(cmd.name),
                server,
                message_id=f"server:{cmd.name}:{config_digest}{suffix}",
                expected_last_subject_seq=None if existing else self.catalog.registered_seq.get(cmd.name, 0),
            )
        except StaleAppend as exc:
            raise CommandError("server_exists", f"server {cmd.name!r} was registered concurrently") from exc
        discovered = ev.ToolsDiscovered(server=cmd.name, tools=tools)
        tools_digest = sha256_digest([t.tool_digest for t in tools])
        await self.svc.append_control(
            subjects.tools_subject(cmd.name),
            discovered,
            message_id=f"tools:{cmd.name}:{tools_digest}{suffix}",
        )
        return {"server": cmd.name, "tools": [tool_row(cmd.name, t, self.catalog) for t in tools]}

    async def remove_server(self, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, RemoveServer)
        await self.follower.ensure_fresh()
        granted(registered(self.catalog, cmd.name, hint=" (`writ server list`)"))
        catalog = self.catalog
        tools = sorted({*catalog.tools.get(cmd.name, {}), *catalog.quarantined.get(cmd.name, {})})
        removed = ev.ServerRemoved(name=cmd.name, removed_by=cmd.removed_by, reason=cmd.reason)
        await self.svc.append_control(
            subjects.server_removed_subject(cmd.name),
            removed,
            message_id=f"server-removed:{cmd.name}:{catalog.registered_seq.get(cmd.name, 0)}",
        )
        await self.follower.ensure_fresh()
        return {"server": cmd.name, "tools": tools}

    async def refresh_server(self, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, RefreshServer)
        await self.follower.ensure_fresh()
        server = granted(registered(self.catalog, cmd.name))
        tools = await discover_tools(self.svc, server)
        discovered = ev.ToolsDiscovered(server=cmd.name, tools=tools, initial=False)
        await self.svc.append_control(
            subjects.tools_subject(cmd.name),
            discovered,
            message_id=f"tools:{cmd.name}:{sha256_digest([t.tool_digest for t in tools])}:{self.catalog_seq()}",
        )
        await self.follower.ensure_fresh()
        return {
            "server": cmd.name,
            "tools": [tool_row(cmd.name, t, self.catalog) for t in tools],
            "quarantined": sorted(self.catalog.quarantined.get(cmd.name, {})),
        }

    async def accept_tool(self, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, AcceptTool)
        await self.follower.ensure_fresh()
        pending = granted(quarantined(self.catalog, cmd.server, cmd.tool))
        accepted = ev.ToolAccepted(
            server=cmd.server, tool=cmd.tool, tool_digest=pending.tool_digest, accepted_by=cmd.accepted_by
        )
        await self.svc.append_control(
            subjects.accepted_subject(cmd.server),
            accepted,
            message_id=f"accepted:{cmd.server}:{cmd.tool}:{pending.tool_digest}",
        )
        await self.follower.ensure_fresh()
        return tool_row(cmd.server, pending, self.catalog)

    async def list_servers(self, _body: dict[str, Any]) -> Any:
        await self.follower.ensure_fresh()
        return [server_row(s, self.catalog) for s in sorted(self.catalog.servers.values(), key=lambda s: s.name)]

    async def list_tools(self, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, ListTools)
        await self.follower.ensure_fresh()
        catalog = self.catalog
        accepted = [
            tool_row(server, t, catalog)
            for server, tools in sorted(catalog.tools.items())
            if cmd.server in (None, server)
            for t in sorted(tools.values(), key=lambda t: t.name)
        ]
        waiting = [
            {**tool_row(server, t, catalog), "status": "quarantined"}
            for server, tools in sorted(catalog.quarantined.items())
            if cmd.server in (None, server)
            for t in sorted(tools.values(), key=lambda t: t.name)
        ]
        return accepted + waiting

    async def set_override(self, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, ev.ToolOverrideSet)  # the command is the event it asks for
        await self.follower.ensure_fresh()
        granted(accepted_tool(self.catalog, cmd.server, cmd.tool))
        await self.svc.append_control(
            subjects.override_subject(cmd.server),
            cmd,
            message_id=f"override:{sha256_digest(msgspec.to_builtins(cmd))}:{self.catalog_seq()}",
        )
        await self.follower.ensure_fresh()
        definition = self.catalog.tools[cmd.server][cmd.tool]  # as folded, with the override applied
        return tool_row(cmd.server, definition, self.catalog)

    def catalog_seq(self) -> int:
        return self.follower.applied_seq

    async def ping(self, _body: dict[str, Any]) -> Any:
        return {"service": self.svc.name, "servers": len(self.catalog.servers), "dead_letters": self.svc.dead_letters}


def build(settings: WritSettings) -> Service:
    svc = Service("registry", settings)
    Registry(svc, settings).wire()
    return svc


async def discover_tools(svc: Service, server: ev.ServerRegistered) -> list[ev.ToolDefinition]:
    """The server's tools over MCP, or a command error saying what really went wrong.

    A server whose configuration refers to secrets is discovered by the executor, the only
    service that resolves them; the registry never sees a value.

    Raises:
        CommandError: ``discovery_failed``, with the first real error inside any task group;
            from the executor also ``secret_missing`` or ``service_down``.
    """
    if server.secret_env or server.secret_headers:
        body = {"server": msgspec.to_builtins(server)}
        found = await commands.call(svc.nc, "executor", "discover", body, timeout=DISCOVERY_TIMEOUT + 5)
        return msgspec.convert(found, list[ev.ToolDefinition])
    try:
        return await asyncio.wait_for(discover(server), DISCOVERY_TIMEOUT)
    except Exception as exc:
        cause = root_cause(exc)
        raise CommandError(
            "discovery_failed", f"could not list the tools of {server.name!r} over MCP: {type(cause).__name__}: {cause}"
        ) from exc


def tool_row(server: str, tool: ev.ToolDefinition, catalog: Catalog) -> dict[str, Any]:
    return {
        "server": server,
        "name": tool.name,
        "description": tool.description,
        "tool_digest": tool.tool_digest,
        "annotations": msgspec.to_builtins(catalog.annotations(server, tool)),
        "overridden": (server, tool.name) in catalog.overrides,
        "status": "accepted",
        "idempotency_arg": catalog.idempotency_arg(server, tool.name),
        "input_schema": tool.input_schema,
        "output_schema": tool.output_schema,
        "listed": tool.listed,  # as the server listed it (None: discovered before Writ kept it)
    }


def server_row(server: ev.ServerRegistered, catalog: Catalog) -> dict[str, Any]:
    """What `writ server list` prints: the target and the secrets by name, never a value."""
    return {
        "name": server.name,
        "transport": server.transport,
        "target": describe_target(server),
        "tools": len(catalog.tools.get(server.name, {})),
        "max_concurrency": server.max_concurrency,
        "secrets": sorted(
            [f"env {k}=secret:{v}" for k, v in server.secret_env.items()]
            + [f"header {k}=secret:{v}" for k, v in server.secret_headers.items()]
        ),
    }
