"""What the executor tells a gateway beside calls, read defensively, and which client sessions
hold which resource subscription. Pure: the gateway's server does the sending."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from writ_common import subjects

MAX_NOTICE_BYTES = 16 * 1024  # a URI is at most 2,048 characters (operations.MAX_TARGET_LENGTH)


@dataclass(frozen=True, slots=True)
class Updated:
    """A server said the resource ``uri`` changed (``notifications/resources/updated``)."""

    server: str
    uri: str


def updated_of(data: bytes) -> Updated | None:
    """The resources/updated notice in ``data``, or None when it is not one (ignored, never raised)."""
    if len(data) > MAX_NOTICE_BYTES:
        return None
    try:
        said: Any = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(said, dict):
        return None
    server, uri = said.get("server"), said.get("uri")
    if not isinstance(server, str) or not isinstance(uri, str) or not server or not uri:
        return None
    return Updated(server, uri)


def list_change_of(subject: str) -> str | None:
    """``resources`` or ``prompts``: whose listing a list-changed notice's subject says changed
    (None: not such a subject)."""
    prefix = subjects.LIST_CHANGED_PREFIX + "."
    if not subject.startswith(prefix):
        return None
    kind = subject.rsplit(".", 1)[-1]
    return kind if kind in subjects.LIST_CHANGED_KINDS and subject.count(".") == 3 else None


def held_elsewhere(holdings: Iterable[Mapping[str, str]], uri: str) -> bool:
    """Whether any of ``holdings`` (the other client sessions' URI -> server) still holds ``uri``:
    then one client's unsubscribe only stops relaying to it, and no intent is submitted."""
    return any(uri in held for held in holdings)


def holders_of(holdings: Mapping[Any, Mapping[str, str]], update: Updated) -> list[Any]:
    """The client sessions an update goes to: exactly those holding its URI on its server."""
    return [client for client, held in holdings.items() if held.get(update.uri) == update.server]
