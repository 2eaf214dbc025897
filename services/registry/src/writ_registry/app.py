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
from writ_common.commands import CommandError, require_token
from writ_common.digest import sha256_digest
from writ_common.envelope import StoredEvent
from writ_common.fold import IntentView
from writ_common.mcp_client import discover, root_cause
from writ_common.service import Service
from writ_common.settings import WritSettings
from writ_registry.domain import Validators, plan, secret_reference_problem

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


def build(settings: WritSettings) -> Service:
    svc = Service("registry", settings)
    catalog = Catalog()
    validators = Validators()
    args_key = settings.resolved_args_digest_key()
    follower = svc.follow(subjects.REGISTRY_STREAM, catalog.apply)

    async def on_authenticated(trigger: StoredEvent, _raw: Msg) -> None:
        async def decide(view: IntentView) -> list[ev.Payload]:
            if view.planned is not None or view.authenticated is None or view.submitted is None:
                return []
            decision = plan(
                view, catalog, validators, args_key=args_key, max_argument_bytes=settings.max_argument_bytes
            )
            unknown = isinstance(decision, ev.IntentRejected) and decision.code == "unknown_tool"
            # A server registered a moment ago may not be folded yet: catch up once, then decide.
            if unknown and await follower.ensure_fresh():
                decision = plan(
                    view, catalog, validators, args_key=args_key, max_argument_bytes=settings.max_argument_bytes
                )
            return [decision]

        await svc.run_stage(trigger, "plan", decide)

    async def add_server(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, AddServer)
        require_token(cmd.name, code="invalid_server_name", what="server name")
        if cmd.transport == "stdio" and not cmd.command:
            raise CommandError("invalid_server", "a stdio server needs a command")
        if cmd.transport == "http" and not cmd.url:
            raise CommandError("invalid_server", "an http server needs a url")
        server = msgspec.convert(msgspec.to_builtins(cmd), ev.ServerRegistered)
        if problem := secret_reference_problem(server):
            raise CommandError("invalid_server", problem)
        await follower.ensure_fresh()
        existing = catalog.servers.get(cmd.name)
        if existing is not None and existing != server:
            raise CommandError(
                "server_exists",
                f"server {cmd.name!r} is already registered with another configuration"
                f" ({describe_target(existing)}); `writ server remove {cmd.name}` first, or pick another name",
            )
        tools = await discover_tools(svc, server)
        config_digest = sha256_digest(msgspec.to_builtins(server))
        # A name registered again after a removal is a new generation: its own message ids, and
        # fenced on the last registration of the name rather than on an empty subject.
        generation = catalog.removals.get(cmd.name, 0)
        suffix = f":{generation}" if generation else ""
        try:
            await svc.append_control(
                subjects.server_subject(cmd.name),
                server,
                message_id=f"server:{cmd.name}:{config_digest}{suffix}",
                expected_last_subject_seq=None if existing else catalog.registered_seq.get(cmd.name, 0),
            )
        except StaleAppend as exc:
            raise CommandError("server_exists", f"server {cmd.name!r} was registered concurrently") from exc
        discovered = ev.ToolsDiscovered(server=cmd.name, tools=tools)
        tools_digest = sha256_digest([t.tool_digest for t in tools])
        await svc.append_control(
            subjects.tools_subject(cmd.name),
            discovered,
            message_id=f"tools:{cmd.name}:{tools_digest}{suffix}",
        )
        return {"server": cmd.name, "tools": [tool_row(cmd.name, t, catalog) for t in tools]}

    async def remove_server(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, RemoveServer)
        await follower.ensure_fresh()
        if cmd.name not in catalog.servers:
            raise CommandError("unknown_server", f"no server {cmd.name!r} is registered (`writ server list`)")
        tools = sorted({*catalog.tools.get(cmd.name, {}), *catalog.quarantined.get(cmd.name, {})})
        removed = ev.ServerRemoved(name=cmd.name, removed_by=cmd.removed_by, reason=cmd.reason)
        await svc.append_control(
            subjects.server_removed_subject(cmd.name),
            removed,
            message_id=f"server-removed:{cmd.name}:{catalog.registered_seq.get(cmd.name, 0)}",
        )
        await follower.ensure_fresh()
        return {"server": cmd.name, "tools": tools}

    async def refresh_server(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, RefreshServer)
        await follower.ensure_fresh()
        server = catalog.servers.get(cmd.name)
        if server is None:
            raise CommandError("unknown_server", f"no server {cmd.name!r} is registered")
        tools = await discover_tools(svc, server)
        discovered = ev.ToolsDiscovered(server=cmd.name, tools=tools, initial=False)
        await svc.append_control(
            subjects.tools_subject(cmd.name),
            discovered,
            message_id=f"tools:{cmd.name}:{sha256_digest([t.tool_digest for t in tools])}:{catalog_seq()}",
        )
        await follower.ensure_fresh()
        return {
            "server": cmd.name,
            "tools": [tool_row(cmd.name, t, catalog) for t in tools],
            "quarantined": sorted(catalog.quarantined.get(cmd.name, {})),
        }

    async def accept_tool(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, AcceptTool)
        await follower.ensure_fresh()
        pending = catalog.quarantined.get(cmd.server, {}).get(cmd.tool)
        if pending is None:
            raise CommandError("not_quarantined", f"{cmd.server}/{cmd.tool} has no version waiting in quarantine")
        accepted = ev.ToolAccepted(
            server=cmd.server, tool=cmd.tool, tool_digest=pending.tool_digest, accepted_by=cmd.accepted_by
        )
        await svc.append_control(
            subjects.accepted_subject(cmd.server),
            accepted,
            message_id=f"accepted:{cmd.server}:{cmd.tool}:{pending.tool_digest}",
        )
        await follower.ensure_fresh()
        return tool_row(cmd.server, pending, catalog)

    async def list_servers(_body: dict[str, Any]) -> Any:
        await follower.ensure_fresh()
        return [
            {
                "name": s.name,
                "transport": s.transport,
                "target": describe_target(s),
                "tools": len(catalog.tools.get(s.name, {})),
                "secrets": sorted(
                    [f"env {k}=secret:{v}" for k, v in s.secret_env.items()]
                    + [f"header {k}=secret:{v}" for k, v in s.secret_headers.items()]
                ),
            }
            for s in sorted(catalog.servers.values(), key=lambda s: s.name)
        ]

    async def list_tools(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, ListTools)
        await follower.ensure_fresh()
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

    async def set_override(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, ev.ToolOverrideSet)  # the command is the event it asks for
        await follower.ensure_fresh()
        if cmd.tool not in catalog.tools.get(cmd.server, {}):
            raise CommandError("unknown_tool", f"no tool {cmd.tool!r} on server {cmd.server!r}")
        await svc.append_control(
            subjects.override_subject(cmd.server),
            cmd,
            message_id=f"override:{sha256_digest(msgspec.to_builtins(cmd))}:{catalog_seq()}",
        )
        await follower.ensure_fresh()
        definition = catalog.tools[cmd.server][cmd.tool]
        return tool_row(cmd.server, definition, catalog)

    def catalog_seq() -> int:
        return follower.applied_seq

    async def ping(_body: dict[str, Any]) -> Any:
        return {"service": svc.name, "servers": len(catalog.servers), "dead_letters": svc.dead_letters}

    svc.consume_intents(subjects.intents_of_type("intent.authenticated"), on_authenticated)
    svc.command("add_server", add_server)
    svc.command("remove_server", remove_server)
    svc.command("list_servers", list_servers)
    svc.command("list_tools", list_tools)
    svc.command("set_override", set_override)
    svc.command("refresh_server", refresh_server)
    svc.command("accept_tool", accept_tool)
    svc.command("ping", ping)
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


def describe_target(server: ev.ServerRegistered) -> str:
    """Where a server is: its URL, or its command line."""
    if server.transport == "http":
        return server.url or ""
    return " ".join([server.command or "", *server.args]).strip()


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
