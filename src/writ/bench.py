"""``make bench``: submit-to-receipt latency through the whole plane vs. the same MCP call made directly.

Starts an embedded plane (separate service processes, nats-server with fsync always) on a
temporary data directory, runs N sequential intents to ``mcp-server-time``, then N direct calls
over one warm ``mcp`` SDK session, and prints p50/p99 of both and the overhead. Then it splits the
plane's time into hops, from the event timestamps the views projected for the measured intents,
so the next person tuning it sees where the time goes.

``--cluster`` also starts a 3-node loopback cluster with R3 streams (``writ up --cluster 3``) and
interleaves its intents with the others, and prints the ratio of their p50 (target: within 1.5x).
Run one after the other, the two planes' p50 moved between runs by up to 40 % on this machine
(the host, not Writ), and so did their ratio; interleaved, both see the same moments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from writ.runtime.processes import free_port
from writ.runtime.supervisor import Plane
from writ.sdk import ReceiptTimeout, WritAgent
from writ_common import commands
from writ_common.settings import WritSettings
from writ_common.signing import generate_key, public_key_b64
from writ_ledger.views.project import ms_between
from writ_ledger.views.queries import open_reader

TIME_SERVER = str(Path(sys.executable).parent / "mcp-server-time")
POLICY = Path(__file__).resolve().parents[2] / "deploy" / "policies" / "default.cedar"
ARGS = {"timezone": "Europe/Paris"}
CLUSTER_TARGET = 1.5  # R3 p50 / single-node p50 (issue 12)
STRANDED_AFTER = 20.0  # seconds without a receipt after which an intent counts as stranded


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# Each hop: from the event that hands the intent on to the event the next stage appends
# (its decision time), as the views recorded them; the executor's hop includes the tool call.
HOPS = (
    ("identity: submitted -> authenticated", "submitted_at", "authenticated_at"),
    ("registry: authenticated -> planned", "authenticated_at", "planned_at"),
    ("policy: planned -> authorized", "planned_at", "decided_at"),
    ("executor: authorized -> started", "decided_at", "started_at"),
    ("executor: started -> succeeded (tool call)", "started_at", "ended_at"),
    ("ledger: succeeded -> receipt recorded", "ended_at", "recorded_at"),
)


async def bench_agent(settings: WritSettings) -> WritAgent:
    """An agent allowed to call the time server on the plane at ``settings``."""
    nc = await nats.connect(settings.nats_servers(), **settings.bus_options())
    key = generate_key()
    await commands.call(
        nc, "identity", "register_agent", {"agent_id": "bench-agent", "public_key": public_key_b64(key)}
    )
    await commands.call(nc, "registry", "add_server", {"name": "time", "command": TIME_SERVER})
    await commands.call(nc, "policy", "load", {"cedar": POLICY.read_text()})
    return WritAgent(nc, "bench-agent", key)


Call = Callable[[int], Awaitable[tuple[str, float] | None]]


@dataclass
class Side:
    """One way of making the call, and what it measured: latency (ms) by intent id (or call
    number), and how many intents got no receipt within ``STRANDED_AFTER`` seconds."""

    label: str
    call: Call
    samples: dict[str, float] = field(default_factory=dict)
    stranded: int = 0


def through(agent: WritAgent) -> Call:
    async def call(i: int) -> tuple[str, float] | None:
        started = time.perf_counter()
        try:
            receipt = await agent.call("get_current_time", ARGS, timeout=STRANDED_AFTER)
        except ReceiptTimeout as exc:
            print(f"intent {i}: {exc}", file=sys.stderr)
            return None
        elapsed = time.perf_counter() - started
        if receipt.status != "succeeded":
            raise SystemExit(f"intent {i} ended {receipt.status}: {receipt.reason}")
        return receipt.intent_id, elapsed * 1000

    return call


def directly(session: ClientSession) -> Call:
    async def call(i: int) -> tuple[str, float] | None:
        started = time.perf_counter()
        result = await session.call_tool("get_current_time", ARGS)
        elapsed = time.perf_counter() - started
        if result.is_error:
            raise SystemExit(f"direct call {i} failed")
        return str(i), elapsed * 1000

    return call


async def interleaved(planes: list[tuple[str, WritSettings]], n: int, warmup: int) -> list[Side]:
    """``n`` sequential calls on each plane, interleaved call by call (the order rotating each
    round), so a slower or faster moment of the machine falls on every plane alike and their
    ratio compares like with like."""
    agents = [await bench_agent(settings) for _, settings in planes]
    try:
        sides = [Side(label, through(agent)) for (label, _), agent in zip(planes, agents, strict=True)]
        await run_calls(sides, n, warmup)
        return sides
    finally:
        for agent in agents:
            await agent.nc.close()


async def run_calls(sides: list[Side], n: int, warmup: int) -> None:
    for i in range(warmup + n):
        for side in sides[i % len(sides) :] + sides[: i % len(sides)]:
            outcome = await side.call(i)
            if outcome is None:
                side.stranded += 1
            elif i >= warmup:
                side.samples[outcome[0]] = outcome[1]


async def direct(n: int, warmup: int) -> Side:
    """The same call over one warm ``mcp`` SDK session, on its own (as a direct caller makes it)."""
    async with (
        stdio_client(StdioServerParameters(command=TIME_SERVER)) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        side = Side("direct mcp SDK call", directly(session))
        await run_calls([side], n, warmup)
        return side


def hop_breakdown(views_db: Path, plane_ms: dict[str, float], timeout: float = 30.0) -> list[tuple[str, list[float]]]:
    """Per-hop durations (ms) of the measured intents, read from the ledger's views (read-only).

    What is left of the agent's measured time is the agent's own share: signing, the submit
    round trip, and hearing of and reading back the receipt.
    """
    columns = sorted({c for _, a, b in HOPS for c in (a, b)})
    select = ", ".join(f"{'r' if c == 'recorded_at' else 'i'}.{c}" for c in columns)
    deadline = time.monotonic() + timeout
    while True:  # the projection may trail the last receipt by a moment
        with contextlib.closing(open_reader(views_db)) as db:
            rows = db.execute(
                f"SELECT i.intent_id, {select} FROM intents i JOIN receipts r USING (intent_id)"
                f" WHERE i.intent_id IN ({', '.join('?' * len(plane_ms))})",
                list(plane_ms),
            ).fetchall()
        if len(rows) == len(plane_ms) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    hops: list[tuple[str, list[float]]] = [(label, []) for label, _, _ in HOPS]
    agent_share: list[float] = []
    for at in rows:  # sqlite3.Row: by column name
        spans = [ms for _, start, end in HOPS if (ms := ms_between(at[start], at[end])) is not None]
        in_plane = ms_between(at["submitted_at"], at["recorded_at"])
        if in_plane is None or len(spans) < len(HOPS):
            continue  # a stage without its timestamp
        for (_, durations), ms in zip(hops, spans, strict=True):
            durations.append(ms)
        agent_share.append(plane_ms[at["intent_id"]] - in_plane)
    hops.append(("agent: sign, submit, hear and read receipt", agent_share))
    return hops


def fresh_plane(stack: contextlib.ExitStack, cluster: int) -> Plane:
    """A fresh plane of ``cluster`` nats-servers on a temporary data directory, up and ready."""
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="writ-bench-"))
    plane = stack.enter_context(
        Plane(Path(tmp) / "data", nats_port=free_port(), redis_port=free_port(), cluster=cluster)
    )
    plane.wait_ready(timeout=120)
    return plane


def print_row(label: str, samples: list[float]) -> None:
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    print(f"{label:42} {p50:9.2f} {p99:9.2f} {statistics.fmean(samples):9.2f}")


def print_hops(title: str, hops: list[tuple[str, list[float]]], measured: int) -> None:
    print(f"\n{title} ({len(hops[0][1])} of {measured} intents, from event timestamps)")
    print(f"{'':42} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for label, samples in hops:
        if samples:
            print_row(label, samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=300, help="sequential calls per side (default 300)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also run the same intents on a 3-node loopback cluster with R3 streams (`writ up --cluster 3`)"
        f" and compare p50 with the single node (target: within {CLUSTER_TARGET:g}x)",
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        planes: list[tuple[str, Plane]] = [("through Writ (submit -> signed receipt)", fresh_plane(stack, 1))]
        if args.cluster:
            planes.append(("through Writ, 3-node cluster, R3 streams", fresh_plane(stack, 3)))
        sides = asyncio.run(interleaved([(label, plane.settings) for label, plane in planes], args.n, args.warmup))
        views = [plane.settings.data_dir / "ledger" / "views.sqlite3" for _, plane in planes]
        hops = hop_breakdown(views[0], sides[0].samples)
        cluster_hops = hop_breakdown(views[1], sides[1].samples) if args.cluster else []
    sides.append(asyncio.run(direct(args.n, args.warmup)))
    plane_ms, direct_ms = list(sides[0].samples.values()), list(sides[-1].samples.values())
    cluster_ms = list(sides[1].samples.values()) if args.cluster else []
    stranded, cluster_stranded = sides[0].stranded, (sides[1].stranded if args.cluster else 0)
    rows = [(side.label, list(side.samples.values())) for side in sides]
    print(
        f"\nget_current_time on mcp-server-time (stdio), {args.n} sequential calls each, {args.warmup} warm-up"
        + (", the two planes interleaved call by call" if args.cluster else "")
    )
    print(f"{'':42} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for label, samples in rows:
        print_row(label, samples)
    p50_over = percentile(plane_ms, 0.5) - percentile(direct_ms, 0.5)
    p99_over = percentile(plane_ms, 0.99) - percentile(direct_ms, 0.99)
    ratio = percentile(plane_ms, 0.5) / percentile(direct_ms, 0.5)
    print(f"{'overhead (plane - direct)':42} {p50_over:9.2f} {p99_over:9.2f}")
    print(f"ratio plane/direct at p50: {ratio:.1f}x")
    if cluster_ms:
        r3 = percentile(cluster_ms, 0.5) / percentile(plane_ms, 0.5)
        verdict = "within" if r3 <= CLUSTER_TARGET else "OVER"
        print(
            f"ratio R3 cluster/single node at p50: {r3:.2f}x ({verdict} the {CLUSTER_TARGET:g}x target);"
            f" at p99: {percentile(cluster_ms, 0.99) / percentile(plane_ms, 0.99):.2f}x"
        )
    for where, lost in (("single node", stranded), ("3-node cluster", cluster_stranded)):
        if lost:
            print(f"{where}: {lost} intents had no receipt within {STRANDED_AFTER:g} s (stranded; left out above)")
    if len(plane_ms) >= 200:  # does the plane slow down as its log grows?
        tenth = len(plane_ms) // 10
        first, last = percentile(plane_ms[:tenth], 0.5), percentile(plane_ms[-tenth:], 0.5)
        print(f"drift: p50 of the first {tenth} intents {first:.2f} ms, of the last {tenth} {last:.2f} ms")
    print_hops("where the plane's time goes, single node", hops, len(plane_ms))
    if cluster_ms:
        print_hops("where the plane's time goes, 3-node cluster (R3)", cluster_hops, len(cluster_ms))


if __name__ == "__main__":
    main()
