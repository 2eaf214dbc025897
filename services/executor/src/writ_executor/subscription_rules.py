"""Who holds which resource subscription, folded from the executor's control stream, and what the
executor then does upstream. Pure: no session, no bus.

A subscription is keyed by (server, uri) and held by a set of agents. Upstream, one
``resources/subscribe`` stands for all of them (one warm session per server serves every agent):
it is sent while the set is non-empty and ``resources/unsubscribe`` only once the last agent left.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from writ_common import events as ev

Key = tuple[str, str]  # (server, uri)


@dataclass
class Subscriptions:
    """The live subscriptions, rebuilt from ``resource.subscribed`` / ``resource.unsubscribed``.

    An event whose intent was already applied changes nothing: a re-run executor may append the
    same fact again after the bus's duplicate window, and it must not undo a later unsubscribe."""

    holders: dict[Key, set[str]] = field(default_factory=dict)
    applied: set[str] = field(default_factory=set)  # intent ids already folded in

    def apply(self, payload: ev.Payload) -> Key | None:
        """Fold one control event in; the key it changed (None: not a subscription event, or a repeat)."""
        if not isinstance(payload, ev.ResourceSubscribed | ev.ResourceUnsubscribed):
            return None
        if payload.intent_id in self.applied:
            return None
        self.applied.add(payload.intent_id)
        key = (payload.server, payload.uri)
        agents = self.holders.setdefault(key, set())
        if isinstance(payload, ev.ResourceSubscribed):
            agents.add(payload.agent_id)
        else:
            agents.discard(payload.agent_id)
        if not agents:
            del self.holders[key]
        return key

    def of(self, server: str, uri: str) -> frozenset[str]:
        """The agents holding ``uri`` on ``server``."""
        return frozenset(self.holders.get((server, uri), ()))

    def live(self, server: str) -> list[str]:
        """The URIs of ``server`` someone holds, in a stable order."""
        return sorted(uri for (name, uri) in self.holders if name == server)

    def servers(self) -> set[str]:
        """The servers with at least one live subscription."""
        return {name for name, _uri in self.holders}


def unsubscribe_upstream(holders: Iterable[str], agent_id: str, *, session_holds: bool) -> bool:
    """Whether ``agent_id`` leaving a subscription sends ``resources/unsubscribe``: only when no
    other agent still holds it and the open session has it (a fresh session holds nothing)."""
    return session_holds and not (set(holders) - {agent_id})


def subscribe_upstream(*, session_holds: bool) -> bool:
    """Whether a subscribe sends ``resources/subscribe``: not when the open session already has it
    (another agent's subscription, or this agent's again): one upstream subscription serves all."""
    return not session_holds


def reconcile(*, wanted: bool, session_holds: bool) -> str | None:
    """After a subscription event (perhaps another replica's), what this executor's open session
    must do for that URI: ``subscribe``, ``unsubscribe`` or nothing."""
    if wanted and not session_holds:
        return "subscribe"
    if not wanted and session_holds:
        return "unsubscribe"
    return None


def subscription_event(
    operation: str, server: str, uri: str, agent_id: str, intent_id: str
) -> ev.ResourceSubscribed | ev.ResourceUnsubscribed | None:
    """The control event a succeeded intent of ``operation`` records (None: not a subscription)."""
    if operation == "subscribe_resource":
        return ev.ResourceSubscribed(server=server, uri=uri, agent_id=agent_id, intent_id=intent_id)
    if operation == "unsubscribe_resource":
        return ev.ResourceUnsubscribed(server=server, uri=uri, agent_id=agent_id, intent_id=intent_id)
    return None


def recipients(subs: Subscriptions, server: str, uri: Any) -> Iterator[str]:
    """The agents a server's ``notifications/resources/updated`` for ``uri`` goes to: exactly the
    holders of that URI on that server (a URI nobody holds goes nowhere)."""
    if isinstance(uri, str):
        yield from sorted(subs.of(server, uri))


LIST_KIND = {"resources/list": "resources", "resources/templates/list": "resources", "prompts/list": "prompts"}


def listing_digest(items: list[dict[str, Any]]) -> str:
    """A digest of what a server listed, to tell a change between two answers."""
    return hashlib.sha256(json.dumps(items, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def listing_changed(previous: str | None, now: str) -> bool:
    """A server's listing changed since the executor's last answer (the first answer: no change known)."""
    return previous is not None and previous != now
