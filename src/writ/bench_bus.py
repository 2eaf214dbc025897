"""``make bench-bus``: how fast bus credentials take effect on ``writ up --cluster 3`` (loopback).

Starts a three-node cluster (no services), then ``--revocations`` times: issues a new agent's
user JWT (as identity does at registration), connects it to every node, revokes it by pushing the
Writ account to one node only (``busauth.push_revocations``, as identity does), and waits until
all three nodes have closed its connections. Prints p50 and max of: connecting with a user JWT,
the push (lookup + update), and push to "closed on every node". Timings on a shared machine are
noisy; compare medians from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import nats
from nats.aio.client import RawCredentials

from writ.runtime.processes import free_port
from writ.runtime.supervisor import Plane
from writ_common import busauth, busjwt


def summary(values_ms: list[float]) -> str:
    return f"p50 {statistics.median(values_ms):6.1f} ms   max {max(values_ms):6.1f} ms"


async def measure(plane: Plane, revocations: int) -> dict[str, list[float]]:
    issuer = plane.bus.issuer()
    timings: dict[str, list[float]] = {"connect": [], "push": [], "closed everywhere": []}
    for n in range(revocations):
        seed = busauth.new_seed()
        user = busauth.agent_user(f"bench-{n}", busauth.public_nkey(seed))
        creds = RawCredentials(busjwt.creds(issuer.user_jwt(user), seed))
        closed = [asyncio.Event() for _ in plane.nats_units]
        for node, event in zip(plane.nats_units, closed, strict=True):

            async def on_closed(event: asyncio.Event = event) -> None:
                event.set()

            started = time.perf_counter()
            await nats.connect(
                plane.nats_node_url(node), user_credentials=creds, allow_reconnect=False, closed_cb=on_closed
            )
            timings["connect"].append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await busauth.push_revocations([plane.nats_node_url("nats-1")], issuer, {user.nkey: int(time.time())})
        timings["push"].append((time.perf_counter() - started) * 1000)
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in closed)), 30)
        timings["closed everywhere"].append((time.perf_counter() - started) * 1000)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--revocations", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        with Plane(data_dir, nats_port=free_port(), redis_port=free_port(), services=(), cluster=3) as plane:
            timings = asyncio.run(measure(plane, args.revocations))
    print(f"{args.revocations} agents, each connected to all 3 nodes, then revoked through nats-1 alone")
    for name, values in timings.items():
        print(f"  {name:<18} {summary(values)}")


if __name__ == "__main__":
    main()
