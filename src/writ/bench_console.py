"""``make bench-console``: what the console's live updates cost and buy, on an embedded plane.

1. How soon a new approval request reaches an open inbox: over the Server-Sent Events stream
   (``/approvals/stream``), and in the same run by a client polling ``GET /approvals`` every 2 s
   (what the page did before, and still does while a stream is down).
2. The ledger's CPU (user + system, from /proc) with 0, 1 and 5 Plane pages open
   (``/plane/stream``), over the same wall time each.
3. How long the ledger takes to stop gracefully with 5 streams open.

Timings share the machine with whatever else runs: the CPU figures are the ledger's own time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import nats
from nacl.signing import SigningKey

from writ.runtime.processes import free_port
from writ.runtime.supervisor import Plane
from writ.sdk import WritAgent
from writ_common import commands
from writ_common.approvals_api import auth_header
from writ_common.signing import generate_key, public_key_b64

POLICY = '@id("ask") @approval("ops") @quorum("1")\npermit(principal, action == Action::"call_tool", resource);\n'
POLL_SECONDS = 2.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def stream(url: str, path: str, authorization: str) -> AsyncIterator[asyncio.StreamReader]:
    """An open SSE stream (HTTP/1.0: the body is the stream itself)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nAuthorization: {authorization}\r\n\r\n".encode())
    try:
        yield reader
    finally:
        writer.close()


async def until_line(reader: asyncio.StreamReader, needle: str) -> float:
    while needle.encode() not in await reader.readline():
        pass
    return time.monotonic()


def listed(url: str, key: SigningKey, intent_id: str) -> bool:
    headers = {"Authorization": auth_header(key, "olga", "GET", "/approvals")}
    with urllib.request.urlopen(urllib.request.Request(url + "/approvals", headers=headers), timeout=10) as res:
        return any(r["intent_id"] == intent_id for r in json.loads(res.read())["approvals"])


async def polled(url: str, key: SigningKey, intent_id: str, phase: float) -> float:
    """When a client polling every POLL_SECONDS (its cycle ``phase`` seconds along) first sees it."""
    await asyncio.sleep(phase)
    while not await asyncio.to_thread(listed, url, key, intent_id):  # noqa: ASYNC110 (a poll is what is measured)
        await asyncio.sleep(POLL_SECONDS)
    return time.monotonic()


def summary(ms: list[float]) -> str:
    ms = sorted(ms)
    return f"p50 {statistics.median(ms):.0f} ms, p95 {ms[int(0.95 * (len(ms) - 1))]:.0f} ms, max {ms[-1]:.0f} ms"


async def run(requests: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="writ-bench-console-") as tmp, Plane(
        Path(tmp) / "data", nats_port=free_port(), redis_port=free_port()
    ) as plane:  # fmt: skip
        plane.wait_ready(60)
        url = f"http://127.0.0.1:{plane.views_port}"
        nc = await nats.connect(plane.nats_url, **plane.settings.bus_options())
        time_server = str(Path(sys.executable).parent / "mcp-server-time")
        await commands.call(nc, "registry", "add_server", {"name": "time", "command": time_server}, 75)
        await commands.call(nc, "policy", "load", {"cedar": POLICY})
        key = generate_key()
        approver = {"approver_id": "olga", "public_key": public_key_b64(key), "groups": ["ops"]}
        await commands.call(nc, "identity", "register_approver", approver)
        agent_key = generate_key()
        await commands.call(
            nc, "identity", "register_agent", {"agent_id": "bench", "public_key": public_key_b64(agent_key)}
        )
        agent = WritAgent(nc, "bench", agent_key)
        token = "wv_" + secrets.token_urlsafe(24)
        digest = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
        await commands.call(
            nc, "identity", "issue_reader_token", {"name": "op", "token_hash": digest, "scope": "operator"}
        )

        pushed: list[float] = []
        polls: list[float] = []
        path = "/approvals/stream"
        for i in range(requests):
            async with stream(url, path, auth_header(key, "olga", "GET", path)) as reader:
                await until_line(reader, "event: approvals")
                started = time.monotonic()
                submission = await agent.submit("time/get_current_time", {"timezone": "UTC"})
                poller = asyncio.create_task(polled(url, key, submission.intent_id, (i * 0.37) % POLL_SECONDS))
                pushed.append((await asyncio.wait_for(until_line(reader, submission.intent_id), 30) - started) * 1000)
                polls.append((await asyncio.wait_for(poller, 30) - started) * 1000)
        print(f"a new request reaches an open inbox, {requests} requests:")
        print(f"  pushed (SSE):     {summary(pushed)}")
        print(f"  polled every 2 s: {summary(polls)}  ({statistics.median(polls) / statistics.median(pushed):.1f}x)")

        ledger = plane.pid("ledger")
        assert ledger is not None
        for n in (0, 1, 5):
            async with contextlib.AsyncExitStack() as open_pages:
                for _ in range(n):
                    await open_pages.enter_async_context(stream(url, "/plane/stream", f"Bearer {token}"))
                await asyncio.sleep(1.0)
                before = cpu_seconds(ledger)
                await asyncio.sleep(seconds)
                used = cpu_seconds(ledger) - before
                print(
                    f"ledger CPU with {n} Plane page(s) open: {used:.2f} s over {seconds:g} s ({100 * used / seconds:.1f}%)"
                )
                if n == 5:
                    began = time.monotonic()
                    await asyncio.to_thread(plane.restart_service, "ledger")
                    print(f"ledger graceful restart with 5 streams open: {time.monotonic() - began:.2f} s")
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20, help="approval requests timed")
    parser.add_argument("--seconds", type=float, default=10.0, help="wall time per CPU reading")
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.seconds))


if __name__ == "__main__":
    main()
