"""Server-Sent Events for the console: a snapshot pushed each time it changes.

A stream sends one ``event`` whose ``data`` is the whole JSON snapshot (the inbox, a page of
intents, the plane), first at once and then whenever a new reading differs from the last one
sent. It reads again when its :class:`Pulse` beats (something was appended) and every ``every``
seconds whatever happens, at most once per ``min_gap`` seconds (a burst of beats, one reading). A comment line every
``HEARTBEAT_SECONDS`` finds a vanished client; a stream ends after ``max_seconds`` (the client
reconnects, authenticating again, so a revoked token or key stops being served) or when the
server closes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

MEDIA_TYPE = "text/event-stream"
HEARTBEAT_SECONDS = 15.0
MAX_SECONDS = 120.0
RETRY_MS = 2000


def frame(event: str, data: Any) -> bytes:
    """One SSE message: ``event: <event>`` and the JSON of ``data`` on one ``data:`` line."""
    if not event or any(c in event for c in "\r\n:"):
        raise ValueError(f"an SSE event name is one word, not {event!r}")
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)  # JSON escapes every newline
    return f"event: {event}\ndata: {body}\n\n".encode()


def comment(text: str) -> bytes:
    """An SSE comment line (clients ignore it): a heartbeat."""
    return f": {text.replace(chr(10), ' ').replace(chr(13), ' ')}\n\n".encode()


class Pulse:
    """Beats when something a stream shows may have changed; any number of streams wait on it."""

    def __init__(self) -> None:
        self._beat = asyncio.Event()
        self.count = 0  # beats so far: a reader that saw ``count`` before reading misses no beat after

    def beat(self) -> None:
        self.count += 1
        beat, self._beat = self._beat, asyncio.Event()
        beat.set()

    async def wait(self, timeout: float, *, since: int | None = None) -> bool:
        """Wait for a beat after the ``since``-th (default: the next one), at most ``timeout``
        seconds; whether it beat."""
        if since is not None and self.count != since:
            return True
        beat = self._beat
        try:
            await asyncio.wait_for(beat.wait(), timeout)
        except TimeoutError:
            return False
        return True


async def snapshots(
    read: Callable[[], Awaitable[Any]],
    *,
    event: str,
    pulse: Pulse | None = None,
    every: float = 5.0,
    min_gap: float = 0.25,
    closing: asyncio.Event | None = None,
    request: Request | None = None,
    max_seconds: float = MAX_SECONDS,
    heartbeat: float = HEARTBEAT_SECONDS,
) -> AsyncIterator[bytes]:
    """The frames of one stream (see the module doc). A reading that fails is sent as an
    ``error`` event (``{"error": code, "message": ...}``) and read again later. With ``request``,
    the stream ends as soon as its client goes (under ASGI 2.4 Starlette would only notice at the
    next write, a heartbeat away)."""
    gone = asyncio.Event()
    watcher = asyncio.ensure_future(_watch_disconnect(request, gone)) if request is not None else None
    try:
        frames = _frames(
            read,
            event=event,
            pulse=pulse,
            every=every,
            min_gap=min_gap,
            stops=(closing, gone),
            max_seconds=max_seconds,
            heartbeat=heartbeat,
        )
        async for chunk in frames:
            yield chunk
    finally:
        if watcher is not None:
            watcher.cancel()


async def _watch_disconnect(request: Request, gone: asyncio.Event) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def _frames(
    read: Callable[[], Awaitable[Any]],
    *,
    event: str,
    pulse: Pulse | None,
    every: float,
    min_gap: float,
    stops: tuple[asyncio.Event | None, ...],
    max_seconds: float,
    heartbeat: float,
) -> AsyncIterator[bytes]:
    yield f"retry: {RETRY_MS}\n\n".encode()
    started = last_sent_at = time.monotonic()
    last: bytes | None = None
    read_at = 0.0
    while True:
        await asyncio.sleep(max(0.0, read_at + min_gap - time.monotonic()))  # a burst of beats is read once
        read_at = time.monotonic()
        seen = pulse.count if pulse is not None else 0  # a beat during the reading reads again
        try:
            out = frame(event, await read())
        except Exception as exc:  # the plane may be restarting: say so, and try again
            out = frame("error", {"error": getattr(exc, "code", "unavailable"), "message": str(exc)})
        if out != last:
            last, last_sent_at = out, time.monotonic()
            yield out
        elif time.monotonic() - last_sent_at >= heartbeat:
            last_sent_at = time.monotonic()
            yield comment("alive")
        remaining = max_seconds - (time.monotonic() - started)
        if remaining <= 0 or _stopped(stops):
            return
        await _until(pulse, seen, stops, min(every, heartbeat, remaining))
        if _stopped(stops):
            return


def _stopped(stops: tuple[asyncio.Event | None, ...]) -> bool:
    return any(stop is not None and stop.is_set() for stop in stops)


async def _until(pulse: Pulse | None, seen: int, stops: tuple[asyncio.Event | None, ...], timeout: float) -> None:
    """Wait for a beat of ``pulse`` after the ``seen``-th, one of ``stops`` or ``timeout`` seconds,
    whichever comes first."""
    waiting = pulse.wait(timeout, since=seen) if pulse is not None else asyncio.sleep(timeout)
    waiters = [asyncio.ensure_future(waiting)]
    waiters += [asyncio.ensure_future(stop.wait()) for stop in stops if stop is not None]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response (also what a route declares, for its OpenAPI document)."""

    media_type = MEDIA_TYPE


def response(frames: AsyncIterator[bytes]) -> EventStream:
    """The HTTP response carrying ``frames``: never cached, never buffered by a proxy."""
    return EventStream(frames, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
