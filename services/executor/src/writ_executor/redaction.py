"""Secrets inside the executor: resolve a server's references, and scrub values from what leaves.

Pure functions over plain values. The executor is the only place a secret's value exists outside
its store: it resolves references into a stdio server's environment or an HTTP server's headers,
and every string that leaves it (tool output, error messages, discovered tool definitions) is
scrubbed first, so a tool that echoes its credentials cannot put them into the log.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from writ_common import events as ev
from writ_common.errors import Refusal

MIN_SECRET_LENGTH = 4  # a shorter value would redact ordinary text and protects nothing


def marker(name: str) -> str:
    """What a secret's value is replaced with."""
    return f"[redacted:{name}]"


def escaped(value: str) -> list[str]:
    """The value as it reads inside a JSON (or JavaScript, or Python repr) string: line breaks as
    ``\\n``, non-ASCII as ``\\u00e9`` (lower- and upper-case hex) or kept as is, ``/`` as ``\\/``."""
    ascii_form = json.dumps(value)[1:-1]
    forms = [
        ascii_form,
        json.dumps(value, ensure_ascii=False)[1:-1],
        re.sub(r"\\u([0-9a-f]{4})", lambda m: "\\u" + m.group(1).upper(), ascii_form),
    ]
    return [*forms, *(f.replace("/", "\\/") for f in forms)]


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
        *escaped(value),
    ]
    return list(dict.fromkeys(f for f in forms if len(f) >= MIN_SECRET_LENGTH))


def line_forms(value: str) -> list[str]:
    """Each line of a multi-line value (a PEM block, a service-account file), as written and
    escaped, so a tool that prints it line by line leaks no line on its own. Lines shorter than
    ``MIN_SECRET_LENGTH`` are left alone: they would redact ordinary text. A line that is not
    secret in itself (a PEM's BEGIN line) is redacted too wherever it appears: that errs safe."""
    lines = [line.strip() for line in value.splitlines()]
    if len(lines) < 2:
        return []
    forms = [form for line in lines for form in (line, *escaped(line))]
    return list(dict.fromkeys(f for f in forms if len(f) >= MIN_SECRET_LENGTH))


class Redactor:
    """Replaces every known secret value (and its common encodings, its JSON-escaped forms, and
    each line of a multi-line value) with ``[redacted:NAME]``.

    Longer values win where one secret contains another, so no fragment is left behind.
    """

    def __init__(self, secrets: Mapping[str, str]) -> None:
        needles: dict[str, str] = {}
        for name, value in sorted(secrets.items()):
            for form in encodings(value):
                needles.setdefault(form, marker(name))
        for name, value in sorted(secrets.items()):  # whole values first: a line never claims a value
            for form in line_forms(value):
                needles.setdefault(form, marker(name))
        self._markers = needles
        ordered = sorted(needles, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        # Every beginning of a multi-line needle that ends at one of its line breaks, longest
        # first: text that ends with one of them may be a secret that the next line completes.
        heads = {n[: i + 1] for n in needles for i, c in enumerate(n[:-1]) if c in "\r\n"}
        self._heads = sorted(heads, key=len, reverse=True)

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        """``text`` with every secret value replaced by its marker."""
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self._markers[m.group(0)], text)

    def split(self, text: str) -> tuple[str, str]:
        """For a stream read line by line: (what can be written now, scrubbed; what to hold back).

        What is held back is the end of ``text`` that could be the first lines of a multi-line
        secret, to be put before the next line and scrubbed with it. It is never longer than the
        longest secret, and whatever is held at the end of the stream is written scrubbed.
        """
        if self._pattern is None:
            return text, ""
        cut = next((len(text) - len(head) for head in self._heads if text.endswith(head)), len(text))
        for match in self._pattern.finditer(text):
            if match.start() < cut < match.end():  # a value that the cut would split: hold it whole
                cut = match.start()
                break
        # Hold from the start of that line: a line is written whole, so another writer's line (the
        # service's own log) never lands between its start and its scrubbed end.
        cut = text.rfind("\n", 0, cut) + 1 if cut < len(text) else cut
        return self.text(text[:cut]), text[cut:]

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


def resolve(server: ev.ServerRegistered, secrets: Mapping[str, str]) -> ev.ServerRegistered | Refusal:
    """The server's configuration with its secret references filled in, or why it cannot be.

    The result holds secret values: it is given to the MCP transport and to nothing else.
    Refuses with ``secret_missing`` (names only) when a referenced secret is not in the store.
    """
    missing = [name for name in references(server) if name not in secrets]
    if missing:
        return Refusal(
            code="secret_missing",
            reason=(
                f"server {server.name!r} needs secret {', '.join(repr(m) for m in missing)}, which is not"
                f" set; an operator sets it with `writ secret set {missing[0]}`"
            ),
        )
    if not server.secret_env and not server.secret_headers:
        return server
    return msgspec.structs.replace(
        server,
        env={**server.env, **{var: secrets[ref] for var, ref in server.secret_env.items()}},
        headers={**server.headers, **{header: secrets[ref] for header, ref in server.secret_headers.items()}},
    )


def invalid_secret_value(value: str) -> Refusal | None:
    """A value too short to redact without redacting ordinary text is refused."""
    if len(value) < MIN_SECRET_LENGTH:
        return Refusal(
            code="invalid_secret", reason=f"a secret's value must be at least {MIN_SECRET_LENGTH} characters"
        )
    return None
