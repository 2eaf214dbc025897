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

    def apply(self, event: StoredEvent) -> None:
        match event.payload:
            case ev.ServerRegistered() as p:
                self.servers[p.name] = p
            case ev.ToolsDiscovered() as p:
                self.tools[p.server] = {t.name: t for t in p.tools}
            case _:
                pass

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
