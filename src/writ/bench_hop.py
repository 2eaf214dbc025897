"""``make bench-hop``: the bus's floor under one hop of a governed call, single node vs. R3.

A governed call is seven fenced appends, each delivered to the next stage by a durable pull
consumer. This measures exactly that, with no service: on a single node (``writ up``) and on a
three-node loopback cluster (``writ up --cluster 3``, R3), ``-n`` sequential appends to a scratch
stream, each timed to its ack (``publish -> ack``) and to its delivery through a standing pull
request (``publish -> delivered``, acked as the stages ack), for a consumer whose state is on file
and one whose state is in memory (``WRIT_CONSUMER_STATE``, docs/configuration.md). The same
sync_interval (always) as the plane. Prints p50/p99 of each and the R3 / single-node ratio of the
delivery p50, the part of ``make bench --cluster``'s ratio that is the bus's own.

Beside them, what the stages do not use: a push consumer with flow control (state in memory).
Since nats-server 2.11 a replicated consumer replicates that it delivered a message before it
sends it, but not to a flow-controlled push consumer: the difference is that round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import nats
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from writ.bench import percentile
from writ.runtime.processes import free_port
from writ.runtime.supervisor import Plane

STREAM = "BENCH_HOP"
PAYLOAD = b"x" * 600  # about one intent event


CONSUMERS = (("pull", "file"), ("pull", "memory"), ("push", "memory"))  # (how it is read, where its state is)


async def one_consumer(plane: Plane, replicas: int, kind: str, state: str, n: int) -> dict[str, list[float]]:
    settings = plane.settings
    publisher = await nats.connect(settings.nats_servers(), **settings.bus_options())
    stage = await nats.connect(settings.nats_servers(), **settings.bus_options())
    js, stage_js = publisher.jetstream(), stage.jetstream()
    in_memory = state == "memory"
    name = f"{kind}-{state}"
    prefix, durable, stream = f"bench.hop.{kind}.{state}", f"hop-{name}", f"{STREAM}_{kind.upper()}_{state.upper()}"
    # A stream of its own per consumer: created once, nothing to take for "already there".
    await js.add_stream(
        StreamConfig(
            name=stream, subjects=[f"{prefix}.>"], num_replicas=replicas, storage=StorageType.FILE, allow_direct=True
        )
    )
    delivered: dict[str, float] = {}
    arrived = asyncio.Event()
    config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, mem_storage=in_memory or None)
    consumer: asyncio.Task[None] | None = None
    if kind == "push":

        async def on_msg(msg: Msg) -> None:
            delivered[msg.subject] = time.perf_counter()
            arrived.set()
            await msg.ack()

        # nats-py answers the server's flow-control requests and watches its heartbeats.
        await stage_js.subscribe(
            f"{prefix}.>",
            durable=durable,
            stream=stream,
            cb=on_msg,
            manual_ack=True,
            flow_control=True,
            idle_heartbeat=2.0,
            config=config,
        )
    else:
        await js.add_consumer(stream, config.evolve(durable_name=durable, filter_subject=f"{prefix}.>"))
        pull = await stage_js.pull_subscribe_bind(durable, stream=stream)

        async def consume() -> None:
            while True:
                try:
                    msgs = await pull.fetch(16, timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                for msg in msgs:
                    delivered[msg.subject] = time.perf_counter()
                    await msg.ack()
                arrived.set()

        consumer = asyncio.create_task(consume())
    timings: dict[str, list[float]] = {"publish -> ack": [], "publish -> delivered": []}
    try:
        await asyncio.sleep(0.3)
        for i in range(n):
            subject = f"{prefix}.{i}"
            started = time.perf_counter()
            await js.publish(subject, PAYLOAD, headers={"Nats-Msg-Id": subject})
            timings["publish -> ack"].append((time.perf_counter() - started) * 1000)
            deadline = started + 10.0
            while subject not in delivered:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), max(0.001, deadline - time.perf_counter()))
            timings["publish -> delivered"].append((delivered[subject] - started) * 1000)
    finally:
        if consumer is not None:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
        await publisher.close()
        await stage.close()
    return timings


def measure(cluster: int, n: int) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        with Plane(data_dir, nats_port=free_port(), redis_port=free_port(), services=(), cluster=cluster) as plane:
            for kind, state in CONSUMERS:
                results[f"{kind}, state on {state}"] = asyncio.run(one_consumer(plane, cluster, kind, state, n))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=300, help="sequential appends per consumer (default 300)")
    args = parser.parse_args()
    single, r3 = measure(1, args.n), measure(3, args.n)
    print(f"{args.n} sequential appends of {len(PAYLOAD)} bytes, each delivered through a durable consumer")
    print(f"{'':64} {'p50 ms':>8} {'p99 ms':>8}")
    for shape, results in (("single node", single), ("3-node R3", r3)):
        for consumer, timings in results.items():
            for what, samples in timings.items():
                label = f"{shape}, {consumer}: {what}"
                print(f"{label:64} {statistics.median(samples):8.2f} {percentile(samples, 0.99):8.2f}")
    base = statistics.median(single["pull, state on file"]["publish -> delivered"])
    for consumer, timings in r3.items():
        ratio = statistics.median(timings["publish -> delivered"]) / base
        print(f"R3 ({consumer}) / single node (pull, state on file), publish -> delivered p50: {ratio:.2f}x")


if __name__ == "__main__":
    main()
