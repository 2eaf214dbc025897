"""Serving the console: its static files, and the guard every response of the ledger's HTTP
port passes through (loopback Host names only, same-origin requests only, a strict CSP)."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONSOLE_PATH = "/console/"
STATIC = resources.files("writ_ledger.console") / "static"
FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "keys.js": "text/javascript; charset=utf-8",
    "render.js": "text/javascript; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
# No inline script or style, nothing from elsewhere, no framing, no forms posting away.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


def console_routes() -> list[Route]:
    """``/`` redirects to the console; ``/console/<file>`` serves its committed static files."""

    async def root(_request: Request) -> Response:
        return RedirectResponse(CONSOLE_PATH, status_code=302)

    async def static(request: Request) -> Response:
        name = str(request.path_params.get("name") or "index.html")
        media = FILES.get(name)
        if media is None:
            return JSONResponse({"error": "not_found", "message": f"no console file {name!r}"}, status_code=404)
        body = (STATIC / name).read_bytes()
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    return [
        Route("/", root, methods=["GET"]),
        Route(CONSOLE_PATH, static, methods=["GET"]),
        Route(CONSOLE_PATH + "{name}", static, methods=["GET"]),
    ]


def _host_name(host: str) -> str:
    """``host[:port]`` without the port (an IPv6 literal keeps its brackets)."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


class SameOrigin:
    """ASGI middleware: refuse a request whose Host is not an allowed name (DNS rebinding) or whose
    Origin is not this very origin (cross-site requests), and add the security headers."""

    def __init__(self, app: ASGIApp, *, extra_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.hosts = {*LOOPBACK_HOSTS, *(h.strip().lower() for h in extra_hosts if h.strip())}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        navigation = scope["method"] == "GET" and headers.get("sec-fetch-mode") == "navigate"
        refusal = self.refusal(host, headers.get("origin"), None if navigation else headers.get("sec-fetch-site"))
        if refusal is not None:
            await refusal(scope, receive, self._secured(send))
            return
        await self.app(scope, receive, self._secured(send))

    def refusal(self, host: str, origin: str | None, fetch_site: str | None) -> Response | None:
        if _host_name(host.lower()) not in self.hosts:
            return _refuse("bad_host", f"Host {host!r} is not this server's name; open the console on 127.0.0.1")
        if origin is not None and origin.lower() != f"http://{host.lower()}":
            return _refuse("cross_origin", f"requests from {origin!r} are refused: same-origin only")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return _refuse("cross_origin", f"a {fetch_site} request is refused: same-origin only")
        return None

    @staticmethod
    def _secured(send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw: list[Any] = list(message.get("headers", []))
                present = {k.decode("latin-1").lower() for k, _ in raw}
                raw.extend((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k not in present)
                message = {**message, "headers": raw}
            await send(message)

        return wrapped


def _refuse(code: str, message: str) -> Response:
    return JSONResponse({"error": code, "message": message}, status_code=403)
