"""Server-Sent Events framing and the snapshot stream: sent at once, again only on a change, woken
by a pulse, ended by ``closing`` or its lifetime, a failed reading sent as an ``error`` event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import pytest

from writ_common import sse


def test_a_frame_is_one_event_and_one_data_line() -> None:
    raw = sse.frame("intents", {"text": "two\nlines", "n": 1})
    assert raw.endswith(b"\n\n")
    lines = raw.decode().split("\n")
    assert lines[0] == "event: intents"
    assert json.loads(lines[1].removeprefix("data: ")) == {"text": "two\nlines", "n": 1}
    assert lines[2:] == ["", ""]


@pytest.mark.parametrize("name", ["", "a\nb", "x:y"])
def test_an_event_name_that_would_break_the_framing_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="one word"):
        sse.frame(name, {})


async def test_a_stream_sends_a_change_once_and_wakes_on_the_pulse() -> None:
    state = {"n": 0}
    reads = 0
    pulse = sse.Pulse()
    closing = asyncio.Event()

    async def read() -> dict[str, int]:
        nonlocal reads
        reads += 1
        return dict(state)

    frames = sse.snapshots(read, event="x", pulse=pulse, every=60, min_gap=0, closing=closing)
    assert (await anext(frames)).startswith(b"retry: ")
    assert await anext(frames) == sse.frame("x", {"n": 0})
    state["n"] = 1
    pending = asyncio.ensure_future(anext(frames))
    await asyncio.sleep(0.05)
    assert not pending.done()  # nothing new until the pulse, though the state changed
    pulse.beat()
    assert await asyncio.wait_for(pending, 2) == sse.frame("x", {"n": 1})
    state["n"] = 2
    pulse.beat()  # while the stream was not waiting (it was sending): not missed
    assert await asyncio.wait_for(anext(frames), 2) == sse.frame("x", {"n": 2})
    pulse.beat()  # the same reading again: nothing is sent
    pending = asyncio.ensure_future(anext(frames))
    await asyncio.sleep(0.05)
    assert not pending.done() and reads == 4
    closing.set()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 2)


async def test_a_failed_reading_is_an_error_event_and_a_stream_ends_by_itself() -> None:
    async def read() -> None:
        raise RuntimeError("nats is restarting")

    frames = [f async for f in sse.snapshots(read, event="x", every=0.01, min_gap=0, max_seconds=0.05)]
    assert frames[1] == sse.frame("error", {"error": "unavailable", "message": "nats is restarting"})
    assert len(frames) == 2  # the same error is not sent again and again


async def test_a_stream_ends_when_its_client_goes_not_at_the_next_heartbeat() -> None:
    """Under uvicorn's ASGI 2.3 Starlette cancels the stream; under 2.4 the stream's own watcher ends
    it (Starlette would notice only at the next write): either way, within moments."""
    import contextlib

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from writ.runtime.processes import free_port

    ended = asyncio.Event()

    async def read() -> dict[str, int]:
        return {"n": 1}

    async def endpoint(request: Request) -> Response:
        async def frames() -> AsyncIterator[bytes]:
            try:
                async for chunk in sse.snapshots(read, event="x", every=60, request=request):
                    yield chunk
            finally:
                ended.set()

        return sse.response(frames())

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    port = free_port()
    app = Starlette(routes=[Route("/s", endpoint)])
    server = Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no "started" event)
        await asyncio.sleep(0.02)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        while b"data: " not in await reader.readline():
            pass
        writer.close()
        await asyncio.wait_for(ended.wait(), 2)  # the heartbeat is 15 s away, the refresh 60 s
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
