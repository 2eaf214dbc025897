"""``make bench-load``: what the plane sustains under concurrent load, and what it costs per call.

Starts an embedded plane (separate service processes, nats-server with fsync always, Redis) on a
temporary data directory, then drives it closed loop: C callers each submit an intent, wait for its
receipt and submit the next, for a fixed time per level. Two tools: ``mcp-server-time``'s
get_current_time (fast) and the ``slow`` tool of tests/servers/faulty_stdio.py (200 ms). For each
level it prints calls/s, latency p50/p99/max, queue age p50 (submitted -> authenticated, from the
views) and the CPU each process spent per call (utime+stime from /proc, plane processes and tool
servers apart), and ends with one JSON line holding every figure and the experiment's envelope.

Not a test: nothing here asserts; the figures are for people to read and compare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from writ.bench import percentile
from writ.runtime.processes import free_port
from writ.runtime.supervisor import Plane
from writ.sdk import WritAgent
from writ_common import commands
from writ_common.settings import WritSettings
from writ_common.signing import generate_key, public_key_b64

TIME_SERVER = str(Path(sys.executable).parent / "mcp-server-time")
SLOW_SERVER = Path(__file__).resolve().parents[2] / "tests" / "servers" / "faulty_stdio.py"
POLICY = '@id("bench-all") permit(principal, action == Action::"call_tool", resource);'
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Level:
    """One closed-loop run: ``callers`` at once for ``seconds`` on one tool."""

    tool: str
    callers: int
    seconds: float
    calls: int = 0
    failures: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms or [0.0]
        per_call = {name: round(ms / max(1, self.calls), 3) for name, ms in sorted(self.cpu_ms.items())}
        plane = sum(v for k, v in per_call.items() if not k.startswith("tool:"))
        return {
            "tool": self.tool,
            "callers": self.callers,
            "seconds": self.seconds,
            "calls": self.calls,
            "failures": self.failures,
            "calls_per_s": round(self.calls / self.seconds, 1),
            "p50_ms": round(percentile(lat, 0.5), 2),
            "p99_ms": round(percentile(lat, 0.99), 2),
            "max_ms": round(max(lat), 2),
            "plane_cpu_ms_per_call": round(plane, 3),
            "cpu_ms_per_call": per_call,
        }


def process_tree(root: int) -> list[int]:
    """``root`` and every descendant (the executor's tool servers are its children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_ms(pid: int) -> float:
    """User + system CPU of one process so far, in ms (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * 1000 / CLOCK_TICKS


def cpu_by_process(plane: Plane) -> dict[str, float]:
    """CPU ms so far of every plane process, the tool servers under ``tool:<pid>``."""
    out: dict[str, float] = {}
    for status in plane.status():
        if status.pid is None:
            continue
        out[status.name] = cpu_ms(status.pid)
        for child in process_tree(status.pid)[1:]:
            out[f"tool:{status.name}:{child}"] = cpu_ms(child)
    return out


async def setup(settings: WritSettings, callers: int) -> tuple[Client, list[WritAgent]]:
    nc = await nats.connect(settings.nats_servers(), **settings.bus_options())
    await commands.call(nc, "registry", "add_server", {"name": "time", "command": TIME_SERVER})
    await commands.call(
        nc,
        "registry",
        "add_server",
        {
            "name": "slow",
            "command": sys.executable,
            "args": [str(SLOW_SERVER)],
            "env": {"FAULTY_DB": str(settings.data_dir / "slow.sqlite3")},
        },
    )
    await commands.call(nc, "policy", "load", {"cedar": POLICY})
    agents = []
    for i in range(callers):  # one agent per caller, as real agents would be
        key = generate_key()
        agent_id = f"load-{i:03d}"
        await commands.call(nc, "identity", "register_agent", {"agent_id": agent_id, "public_key": public_key_b64(key)})
        agents.append(WritAgent(nc, agent_id, key))
    return nc, agents


async def closed_loop(plane: Plane, agents: list[WritAgent], level: Level) -> Level:
    tool, arguments = (
        ("time/get_current_time", {"timezone": "UTC"})
        if level.tool == "fast"
        else ("slow/slow", {"seconds": 0.2, "token": "bench"})
    )
    stop_at = time.monotonic() + level.seconds
    before = cpu_by_process(plane)

    async def caller(agent: WritAgent) -> None:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                receipt = await agent.call(tool, arguments, idempotency_key=uuid.uuid4().hex, timeout=60)
            except Exception:
                level.failures += 1
                continue
            if receipt.status != "succeeded":
                level.failures += 1
                continue
            level.calls += 1
            level.latencies_ms.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(caller(a) for a in agents[: level.callers]))
    after = cpu_by_process(plane)
    level.cpu_ms = {name: after[name] - before.get(name, 0.0) for name in after}
    return level


def print_level(summary: dict[str, Any]) -> None:
    print(
        f"{summary['tool']:5} {summary['callers']:5} {summary['calls_per_s']:9.1f} {summary['p50_ms']:9.2f}"
        f" {summary['p99_ms']:9.2f} {summary['max_ms']:9.2f} {summary['plane_cpu_ms_per_call']:9.2f}"
        f" {summary['failures']:6}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levels", default="1,16,64", help="closed-loop concurrencies (default 1,16,64)")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per level (default 15)")
    parser.add_argument("--tools", default="fast,slow", help="fast (get_current_time), slow (200 ms)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    tools = [t.strip() for t in args.tools.split(",")]
    results: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="writ-bench-load-") as tmp,
        Plane(Path(tmp) / "data", nats_port=free_port(), redis_port=free_port()) as plane,
    ):
        plane.wait_ready(timeout=60)
        settings = plane.settings

        async def run_all() -> None:
            nc, agents = await setup(settings, max(levels))
            try:
                print(
                    f"{'tool':5} {'calls':>5} {'calls/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'cpu ms':>9} {'fail':>6}"
                )
                for tool in tools:
                    await closed_loop(plane, agents, Level(tool, 1, 3.0))  # warm the sessions
                    for callers in levels:
                        summary = (await closed_loop(plane, agents, Level(tool, callers, args.seconds))).summary()
                        print_level(summary)
                        results.append(summary)
            finally:
                await nc.close()

        asyncio.run(run_all())
    envelope = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {k: v for k, v in os.environ.items() if k.startswith("WRIT_")},
        "seconds_per_level": args.seconds,
    }
    print("cpu ms: plane processes (nats, redis, five services) per governed call; tool servers apart")
    print(json.dumps({"bench": "load", "envelope": envelope, "levels": results}))


if __name__ == "__main__":
    main()
