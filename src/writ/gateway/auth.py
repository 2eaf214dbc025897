"""The HTTP gateway's own authentication: a bearer token per agent's gateway.

Whoever reaches ``writ gateway --http`` calls tools as its agent, signed with the agent's key that
only the gateway holds; loopback alone would let any local process (or a page a browser on the
machine loads, through DNS rebinding) do that. So every HTTP request must carry
``Authorization: Bearer <token>``: the token is made once, kept 0600 beside the agent's key, and
given to the MCP clients that may act as the agent. A request without it is answered 401 and
reaches nothing.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_BYTES = 32


def gateway_token_path(data_dir: Path, agent_id: str) -> Path:
    """Where ``writ gateway --as AGENT --http`` keeps the bearer token its clients send."""
    return data_dir / "keys" / "agents" / f"{agent_id}.gateway-token"


def load_or_create_token(path: Path) -> str:
    """The token in ``path``; a new random one (0600, created exclusively) when there is none.

    Raises:
        ValueError: the file holds no usable token (empty, or not one line of URL-safe text).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if len(token) < 16 or not all(c.isalnum() or c in "-_" for c in token):
            raise ValueError(f"{path} holds no usable bearer token (16 or more of A-Z a-z 0-9 - _)") from None
        return token
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


class BearerToken:
    """ASGI middleware: an HTTP request passes only with ``Authorization: Bearer <token>``
    (compared in constant time); anything else gets 401 and never reaches the MCP server."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.admits(scope):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": "unauthorized",
                "message": "send Authorization: Bearer <token>; the token is in the file the gateway's log names",
            }
        ).encode()
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="writ-gateway"'),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def admits(self, scope: Scope) -> bool:
        given: list[Any] = [v for k, v in scope.get("headers", []) if k.lower() == b"authorization"]
        return len(given) == 1 and hmac.compare_digest(bytes(given[0]), self.expected)
