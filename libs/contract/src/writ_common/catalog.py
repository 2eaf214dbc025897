"""The tool catalog folded from the registry stream: servers and their pinned tool definitions.

A tool version is the digest of its definition. What intents may call is the *accepted* version;
a definition discovered later that differs (or a new name) waits in quarantine until an operator
accepts it, so a server cannot change what a tool does under an approved name.
Registry plans with this; executor finds the server configuration in it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field

from writ_common import events as ev
from writ_common.envelope import StoredEvent
from writ_common.errors import Refusal

# How `writ gateway` may join a server's name and a tool's (its --separator choices).
GATEWAY_SEPARATORS = ("__", ".")


@dataclass(slots=True)
class Catalog:
    servers: dict[str, ev.ServerRegistered] = field(default_factory=dict)
    tools: dict[str, dict[str, ev.ToolDefinition]] = field(default_factory=dict)  # server -> name -> accepted
    quarantined: dict[str, dict[str, ev.ToolDefinition]] = field(default_factory=dict)  # server -> name -> pending
    overrides: dict[tuple[str, str], ev.ToolOverrideSet] = field(default_factory=dict)
    # server -> stream sequence of its last server.registered, kept after a removal: the fence a
    # new registration of the same name appends against.
    registered_seq: dict[str, int] = field(default_factory=dict)
    removals: dict[str, int] = field(default_factory=dict)  # server -> how many times it was removed

    def apply(self, event: StoredEvent) -> None:
        match event.payload:
            case ev.ServerRegistered() as p:
                self.servers[p.name] = p
                self.registered_seq[p.name] = event.seq
            case ev.ServerRemoved() as p:
                # Forgotten whole: configuration, accepted and quarantined tools, overrides.
                self.servers.pop(p.name, None)
                self.tools.pop(p.name, None)
                self.quarantined.pop(p.name, None)
                for key in [k for k in self.overrides if k[0] == p.name]:
                    del self.overrides[key]
                self.removals[p.name] = self.removals.get(p.name, 0) + 1
            case ev.ToolsDiscovered(initial=True) as p:
                self.tools[p.server] = {t.name: t for t in p.tools}
                self.quarantined[p.server] = {}
            case ev.ToolsDiscovered() as p:
                # A tool the server no longer offers cannot be called; the rest keep their acceptance.
                # The same version (digest) rediscovered replaces the stored definition: same content,
                # perhaps kept in more detail (``listed``, for a definition pinned before it was kept).
                offered = {t.name: t for t in p.tools}
                accepted = {
                    n: offered[n] if offered[n].tool_digest == t.tool_digest else t
                    for n, t in self.tools.get(p.server, {}).items()
                    if n in offered
                }
                self.tools[p.server] = accepted
                self.quarantined[p.server] = {
                    t.name: t
                    for t in p.tools
                    if t.name not in accepted or accepted[t.name].tool_digest != t.tool_digest
                }
            case ev.ToolAccepted() as p:
                pending = self.quarantined.get(p.server, {})
                if p.tool in pending and pending[p.tool].tool_digest == p.tool_digest:
                    self.tools.setdefault(p.server, {})[p.tool] = pending.pop(p.tool)
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

    def resolve(self, name: str) -> tuple[str, ev.ToolDefinition] | Refusal:
        """Find a tool by ``server/tool`` or by a bare name unique across servers.

        Returns ``(server, definition)``, or the refusal saying why it cannot be resolved.
        A tool whose current definition is in quarantine is refused, whatever was accepted before.
        """
        if "/" not in name and (spelled := self._gateway_spelling(name)) is not None:
            name = spelled
        if "/" in name:
            server, _, tool = name.partition("/")
            candidates = [server]
        else:
            tool = name
            candidates = sorted(set(self.tools) | set(self.quarantined))
        offering = [s for s in candidates if tool in self.tools.get(s, {}) or tool in self.quarantined.get(s, {})]
        if not offering:
            where = f"on server {candidates[0]!r}" if "/" in name else "on any registered server"
            return Refusal(code="unknown_tool", reason=f"no tool {tool!r} {where}{self._did_you_mean(name)}")
        if len(offering) > 1:
            return Refusal(
                code="ambiguous_tool", reason=f"{tool!r} is offered by {', '.join(offering)}; name it as server/{tool}"
            )
        server = offering[0]
        pending = self.quarantined.get(server, {}).get(tool)
        if pending is not None:
            return Refusal(
                code="quarantined_tool",
                reason=f"{server}/{tool} changed (version {pending.tool_digest[7:19]}) and waits for an"
                f" operator: `writ tool accept {server}/{tool}`",
            )
        return server, self.tools[server][tool]

    def _gateway_spelling(self, name: str) -> str | None:
        """``server/tool`` for ``server__tool`` or ``server.tool`` (how `writ gateway` lists a tool
        whose name two servers offer), when no tool is named so itself and exactly one split of the
        name is a server offering that tool (a server's name may hold ``_`` too): one spelling works
        everywhere, the SDK and the CLI included."""
        if any(name in tools for tools in (*self.tools.values(), *self.quarantined.values())):
            return None
        found = {
            f"{server}/{tool}"
            for separator in GATEWAY_SEPARATORS
            for server, tool in _splits(name, separator)
            if tool in self.tools.get(server, {}) or tool in self.quarantined.get(server, {})
        }
        return found.pop() if len(found) == 1 else None

    def _did_you_mean(self, name: str) -> str:
        """``; did you mean 'x', 'y'?`` for the nearest known names (bare or ``server/tool``), or ''."""
        known = {
            spelled
            for server in set(self.tools) | set(self.quarantined)
            for tool in {*self.tools.get(server, {}), *self.quarantined.get(server, {})}
            for spelled in ((f"{server}/{tool}",) if "/" in name else (tool, f"{server}/{tool}"))
        }
        close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.7)
        if not close and "/" not in name:
            return ""
        if not close:  # a right tool on a wrong (or misspelled) server
            tool = name.partition("/")[2]
            close = sorted(k for k in known if k.endswith(f"/{tool}"))[:3]
        return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _splits(name: str, separator: str) -> Iterator[tuple[str, str]]:
    """Every ``(server, tool)`` that ``server + separator + tool`` spells ``name``."""
    at = name.find(separator)
    while at > 0:
        yield name[:at], name[at + len(separator) :]
        at = name.find(separator, at + 1)
