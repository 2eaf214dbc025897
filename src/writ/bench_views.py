"""``make bench-views``: how fast the ledger's views rebuild and answer, on a generated log.

Starts a nats-server (the embedded configuration: file store, fsync always) on a temporary
directory, publishes a generated log of realistic intent lifecycles (at least ``--events`` on the
intent stream, plus agents, tools and one receipt per intent), then:

1. rebuilds the views from the first event ``--rebuilds`` times (the code path of
   ``writ views rebuild``: Direct Get pages from NATS, decode, apply, swap the file in) and prints
   events per second;
2. times the main queries on the result: a filtered page of intents, the next page by cursor, one
   intent in full, stats by agent / tool / hour -- on a fresh read-only connection each, as the
   API and the CLI run them -- and the same list and one-intent queries over the HTTP API.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from writ.runtime.processes import free_port, start_nats
from writ.synthetic import Message, control_log, intent_log, producer_of
from writ_common import events as ev
from writ_common import subjects
from writ_common.envelope import encode, make_envelope
from writ_common.streams import ensure_streams
from writ_ledger.views.api import serving
from writ_ledger.views.queries import IntentFilter, get_intent, list_intents, stats
from writ_ledger.views.runner import Views

EVENTS_PER_INTENT = 6.2  # about, for the synthetic mix
TOKEN = "writv_bench-token"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def generate(target: int, seed: int) -> list[Message]:
    """Control events, then lifecycles until the intent stream holds at least ``target`` events."""
    messages = list(control_log())
    token = ev.ReaderTokenIssued(name="bench", token_hash="sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest())
    messages.append(
        Message(
            subjects.IDENTITY_STREAM,
            subjects.reader_token_subject("bench", "issued"),
            make_envelope(token, producer=producer_of(token)),
        )
    )
    intents = int(target / EVENTS_PER_INTENT) + 1
    while True:
        log = list(intent_log(intents, seed=seed))
        if sum(m.stream == subjects.INTENTS_STREAM for m in log) >= target:
            return messages + log
        intents = int(intents * 1.05) + 1


async def publish(nc: Client, messages: list[Message]) -> None:
    """Publish in bulk (core NATS, no per-message ack), then wait until every stream holds its share."""
    js = nc.jetstream()
    await ensure_streams(js)
    expected = Counter(m.stream for m in messages)
    for i, message in enumerate(messages):
        await nc.publish(message.subject, encode(message.envelope))
        if i % 5000 == 4999:
            await nc.flush(timeout=60)
    await nc.flush(timeout=60)
    for stream, count in expected.items():
        while (await js.stream_info(stream)).state.messages < count:  # noqa: ASYNC110 (polling the server)
            await asyncio.sleep(0.1)


async def timed(n: int, fn: Callable[[int], Awaitable[Any]]) -> list[float]:
    samples = []
    for i in range(n):
        started = time.perf_counter()
        await fn(i)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def http_get(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


async def bench(nats_url: str, data: Path, args: argparse.Namespace) -> None:
    started = time.perf_counter()
    messages = generate(args.events, args.seed)
    generated = time.perf_counter() - started
    by_stream = Counter(m.stream for m in messages)
    nc = await nats.connect(nats_url)
    started = time.perf_counter()
    await publish(nc, messages)
    published = time.perf_counter() - started
    print(f"log: {sum(by_stream.values()):,} events ({', '.join(f'{s} {n:,}' for s, n in sorted(by_stream.items()))})")
    print(f"     generated in {generated:.1f}s, published to nats-server (fsync always) in {published:.1f}s")

    views = Views(data / "views.sqlite3")
    await views.start(nc, follow=False)
    rebuilds = [await views.rebuild() for _ in range(args.rebuilds)]
    digests = {r["digest"] for r in rebuilds}
    rates = [r["events_per_second"] for r in rebuilds]
    print(
        f"\nfull rebuild, {args.rebuilds} runs over {rebuilds[0]['events']:,} events (identical digests: {len(digests) == 1})"
    )
    print(f"{'':36} {'median':>10} {'best':>10} {'worst':>10}")
    print(f"{'events/s':36} {statistics.median(rates):10,.0f} {max(rates):10,.0f} {min(rates):10,.0f}")
    seconds = [r["seconds"] for r in rebuilds]
    print(f"{'seconds':36} {statistics.median(seconds):10.2f} {min(seconds):10.2f} {max(seconds):10.2f}")

    rng = random.Random(args.seed)
    ids = [r[0] for r in views.store.db.execute("SELECT intent_id FROM intents")]
    agents = [r[0] for r in views.store.db.execute("SELECT agent_id FROM agents")]
    statuses = ("succeeded", "denied", "failed", "rejected")
    cursors = []
    for agent in agents:
        first = await views.read(list_intents, IntentFilter(agent=agent, status="succeeded"), limit=50)
        cursors.append(first["next_cursor"])

    async def page(i: int) -> None:
        where = IntentFilter(agent=agents[i % len(agents)], status=statuses[i % len(statuses)])
        await views.read(list_intents, where, limit=50)

    async def next_page(i: int) -> None:
        cursor = cursors[i % len(cursors)]
        await views.read(
            list_intents, IntentFilter(agent=agents[i % len(agents)], status="succeeded"), limit=50, cursor=cursor
        )

    async def window(i: int) -> None:
        await views.read(
            list_intents,
            IntentFilter(since="2026-01-05T09:00:00Z", until="2026-01-05T10:00:00Z", reason="forbidden"),
            limit=50,
        )

    async def one(_i: int) -> None:
        assert await views.read(get_intent, rng.choice(ids)) is not None

    def stats_by(by: Any) -> Callable[[int], Awaitable[Any]]:
        async def run(_i: int) -> None:
            await views.read(stats, by)

        return run

    port = free_port()
    rows: list[tuple[str, list[float]]] = []
    n = args.queries
    rows.append(("intents: agent+status, page 1 of 50", await timed(n, page)))
    rows.append(("intents: next page by cursor", await timed(n, next_page)))
    rows.append(("intents: 1h window + reason", await timed(n, window)))
    rows.append(("one intent (history, receipt)", await timed(n, one)))
    for by in ("agent", "tool", "hour"):
        rows.append((f"stats by {by} (exact p50/p95/p99)", await timed(max(10, n // 10), stats_by(by))))
    async with serving(views, port):
        base = f"http://127.0.0.1:{port}"

        async def api_page(i: int) -> None:
            await asyncio.to_thread(
                http_get, f"{base}/intents?agent={agents[i % len(agents)]}&status=succeeded&limit=50"
            )

        async def api_one(_i: int) -> None:
            await asyncio.to_thread(http_get, f"{base}/intents/{rng.choice(ids)}")

        rows.append(("HTTP GET /intents (filtered page)", await timed(n, api_page)))
        rows.append(("HTTP GET /intents/{id}", await timed(n, api_one)))
    print(f"\nqueries over {len(ids):,} intents")
    print(f"{'':36} {'n':>6} {'p50 ms':>9} {'p99 ms':>9}")
    for label, samples in rows:
        print(f"{label:36} {len(samples):6} {percentile(samples, 0.5):9.2f} {percentile(samples, 0.99):9.2f}")
    await views.stop()
    await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="intent-stream events at least (default 100000)")
    parser.add_argument("--rebuilds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=300, help="runs per list/one-intent query (stats: a tenth)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="writ-bench-views-") as tmp:
        server = start_nats(Path(tmp) / "nats" / "store")
        try:
            asyncio.run(bench(server.url, Path(tmp), args))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
