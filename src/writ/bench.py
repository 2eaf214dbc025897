"""``make bench``: submit-to-receipt latency through the whole plane vs. the same MCP call made directly.

Starts an embedded plane (separate service processes, nats-server with fsync always) on a
temporary data directory, runs N sequential intents to ``mcp-server-time``, then N direct calls
over one warm ``mcp`` SDK session, and prints p50/p99 of both and the overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from writ.runtime.processes import free_port
from writ.runtime.supervisor import Plane
from writ.sdk import WritAgent
from writ_common import commands
from writ_common.settings import WritSettings
from writ_common.signing import generate_key, public_key_b64

TIME_SERVER = str(Path(sys.executable).parent / "mcp-server-time")
POLICY = Path(__file__).resolve().parents[2] / "deploy" / "policies" / "default.cedar"
ARGS = {"timezone": "Europe/Paris"}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def through_plane(settings: WritSettings, n: int, warmup: int) -> list[float]:
    nc = await nats.connect(settings.resolved_nats_url(), **settings.bus_options())
    key = generate_key()
    await commands.call(
        nc, "identity", "register_agent", {"agent_id": "bench-agent", "public_key": public_key_b64(key)}
    )
    await commands.call(nc, "registry", "add_server", {"name": "time", "command": TIME_SERVER})
    await commands.call(nc, "policy", "load", {"cedar": POLICY.read_text()})
    agent = WritAgent(nc, "bench-agent", key)
    samples = []
    for i in range(warmup + n):
        started = time.perf_counter()
        receipt = await agent.call("get_current_time", ARGS, timeout=60)
        elapsed = time.perf_counter() - started
        if receipt.status != "succeeded":
            raise SystemExit(f"intent {i} ended {receipt.status}: {receipt.reason}")
        if i >= warmup:
            samples.append(elapsed * 1000)
    await nc.close()
    return samples


async def direct(n: int, warmup: int) -> list[float]:
    samples = []
    async with (
        stdio_client(StdioServerParameters(command=TIME_SERVER)) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        for i in range(warmup + n):
            started = time.perf_counter()
            result = await session.call_tool("get_current_time", ARGS)
            elapsed = time.perf_counter() - started
            if result.is_error:
                raise SystemExit(f"direct call {i} failed")
            if i >= warmup:
                samples.append(elapsed * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=300, help="sequential calls per side (default 300)")
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="writ-bench-") as tmp,
        Plane(Path(tmp) / "data", nats_port=free_port(), redis_port=free_port()) as plane,
    ):
        plane.wait_ready(timeout=60)
        plane_ms = asyncio.run(through_plane(plane.settings, args.n, args.warmup))
    direct_ms = asyncio.run(direct(args.n, args.warmup))
    rows = [("through Writ (submit -> signed receipt)", plane_ms), ("direct mcp SDK call", direct_ms)]
    print(f"\nget_current_time on mcp-server-time (stdio), {args.n} sequential calls each, {args.warmup} warm-up")
    print(f"{'':42} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for label, samples in rows:
        p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
        print(f"{label:42} {p50:9.2f} {p99:9.2f} {statistics.fmean(samples):9.2f}")
    p50_over = percentile(plane_ms, 0.5) - percentile(direct_ms, 0.5)
    p99_over = percentile(plane_ms, 0.99) - percentile(direct_ms, 0.99)
    ratio = percentile(plane_ms, 0.5) / percentile(direct_ms, 0.5)
    print(f"{'overhead (plane - direct)':42} {p50_over:9.2f} {p99_over:9.2f}")
    print(f"ratio plane/direct at p50: {ratio:.1f}x")


if __name__ == "__main__":
    main()
