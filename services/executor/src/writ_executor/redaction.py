"""Secrets inside the executor: resolve a server's references, and scrub values from what leaves.

Pure functions over plain values. The executor is the only place a secret's value exists outside
its store: it resolves references into a stdio server's environment or an HTTP server's headers,
and every string that leaves it (tool output, error messages, discovered tool definitions) is
scrubbed first, so a tool that echoes its credentials cannot put them into the log.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from writ_common import events as ev

MIN_SECRET_LENGTH = 4  # a shorter value would redact ordinary text and protects nothing


def marker(name: str) -> str:
    """What a secret's value is replaced with."""
    return f"[redacted:{name}]"


def encodings(value: str) -> list[str]:
    """The value as written, and the encodings a tool is likely to echo it in."""
    raw = value.encode()
    forms = [
        value,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        raw.hex(),
        raw.hex().upper(),
        quote(value, safe=""),
    ]
    return list(dict.fromkeys(f for f in forms if len(f) >= MIN_SECRET_LENGTH))


class Redactor:
    """Replaces every known secret value (and its common encodings) with ``[redacted:NAME]``.

    Longer values win where one secret contains another, so no fragment is left behind.
    """

    def __init__(self, secrets: Mapping[str, str]) -> None:
        needles: dict[str, str] = {}
        for name, value in sorted(secrets.items()):
            for form in encodings(value):
                needles.setdefault(form, marker(name))
        self._markers = needles
        ordered = sorted(needles, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        """``text`` with every secret value replaced by its marker."""
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self._markers[m.group(0)], text)

    def value(self, value: Any) -> Any:
        """A JSON-like value with every string in it (keys too, at any depth) scrubbed."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


def references(server: ev.ServerRegistered) -> list[str]:
    """The secret names a server's configuration refers to."""
    return sorted({*server.secret_env.values(), *server.secret_headers.values()})


def resolve(server: ev.ServerRegistered, secrets: Mapping[str, str]) -> ev.ServerRegistered | str:
    """The server's configuration with its secret references filled in, or why it cannot be.

    The result holds secret values: it is given to the MCP transport and to nothing else.
    Returns ``secret_missing: ...`` (names only) when a referenced secret is not in the store.
    """
    missing = [name for name in references(server) if name not in secrets]
    if missing:
        return (
            f"secret_missing: server {server.name!r} needs secret {', '.join(repr(m) for m in missing)}, which is not"
            f" set; an operator sets it with `writ secret set {missing[0]}`"
        )
    if not server.secret_env and not server.secret_headers:
        return server
    return msgspec.structs.replace(
        server,
        env={**server.env, **{var: secrets[ref] for var, ref in server.secret_env.items()}},
        headers={**server.headers, **{header: secrets[ref] for header, ref in server.secret_headers.items()}},
    )
