"""The tool catalog folded from the registry stream: servers and their pinned tool definitions.

Registry plans with it; executor finds the server configuration in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from writ_common import events as ev
from writ_common.envelope import StoredEvent


@dataclass(slots=True)
class Catalog:
    servers: dict[str, ev.ServerRegistered] = field(default_factory=dict)
    tools: dict[str, dict[str, ev.ToolDefinition]] = field(default_factory=dict)  # server -> name -> def
    overrides: dict[tuple[str, str], ev.ToolOverrideSet] = field(default_factory=dict)

    def apply(self, event: StoredEvent) -> None:
        match event.payload:
            case ev.ServerRegistered() as p:
                self.servers[p.name] = p
            case ev.ToolsDiscovered() as p:
                self.tools[p.server] = {t.name: t for t in p.tools}
            case ev.ToolOverrideSet() as p:
                self.overrides[(p.server, p.tool)] = p
            case _:
                pass

    def annotations(self, server: str, tool: ev.ToolDefinition) -> ev.ToolAnnotations:
        """The tool's MCP annotations with the operator's overrides applied."""
        override = self.overrides.get((server, tool.name))
        if override is None:
            return tool.annotations
        hints = tool.annotations
        return ev.ToolAnnotations(
            read_only=hints.read_only if override.read_only is None else override.read_only,
            destructive=hints.destructive if override.destructive is None else override.destructive,
            idempotent=hints.idempotent if override.idempotent is None else override.idempotent,
            open_world=hints.open_world if override.open_world is None else override.open_world,
        )

    def idempotency_arg(self, server: str, tool: str) -> str | None:
        override = self.overrides.get((server, tool))
        return override.idempotency_arg if override else None

    def resolve(self, name: str) -> tuple[str, ev.ToolDefinition] | str:
        """Find a tool by ``server/tool`` or by a bare name unique across servers.

        Returns ``(server, definition)``, or a reason (``code: sentence``) it cannot be resolved.
        """
        if "/" in name:
            server, _, tool = name.partition("/")
            found = self.tools.get(server, {}).get(tool)
            if found is None:
                return f"unknown_tool: no tool {tool!r} on server {server!r}"
            return server, found
        matches = [(s, tools[name]) for s, tools in sorted(self.tools.items()) if name in tools]
        if not matches:
            return f"unknown_tool: no registered server offers a tool named {name!r}"
        if len(matches) > 1:
            servers = ", ".join(s for s, _ in matches)
            return f"ambiguous_tool: {name!r} is offered by {servers}; name it as server/{name}"
        return matches[0]
