"""The deployed shape on one machine (`writ up --cluster 3`: three nats-servers, R3 streams) under
node loss: kill the WRIT_INTENTS stream leader, kill a follower, take two of three nodes down for
10 s, kill all three at once, lose one node for good (`writ bus remove-node`, last: the cluster stays
at two), each while an agent keeps submitting calls to a non-idempotent tool that writes one row per call
(faulty/append_row); then the steady state, N intents one after another with no fault.

For every intent the server acknowledged: exactly one receipt, no row written twice, nothing
stranded (no receipt). Each scenario prints its figures into one summary table, recovery time
included, before it asserts.

Not in `make test` (minutes of load and restarts): `make soak-cluster` runs it
(WRIT_SOAK_CLUSTER=1; WRIT_SOAK_CLUSTER_INTENTS per fault scenario, WRIT_SOAK_CLUSTER_STEADY for
the steady run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rig import Rig, all_receipts
from typer.testing import CliRunner

from plane_metrics import lost_progress_noticed
from writ.cli import app
from writ.runtime.processes import free_port
from writ.runtime.supervisor import Plane
from writ.sdk import ReceiptTimeout, Submission, wait_receipt
from writ_common import busauth, subjects, topology
from writ_common import events as ev
from writ_common.bus import read_history
from writ_common.consumers import CHECK_INTERVAL, kept_floor
from writ_common.settings import WritSettings

pytestmark = [
    pytest.mark.fault,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.skipif(
        os.environ.get("WRIT_SOAK_CLUSTER") != "1", reason="cluster soak: `make soak-cluster` (WRIT_SOAK_CLUSTER=1)"
    ),
]

INTENTS = int(os.environ.get("WRIT_SOAK_CLUSTER_INTENTS", "120"))
STEADY = int(os.environ.get("WRIT_SOAK_CLUSTER_STEADY", "1000"))
CONCURRENCY = 8
DOWN_SECONDS = 10.0
# An intent's deadline: a plane that ends stranded intents as expired (a sweeper) does so within
# the run; without one they stay without a receipt and are counted as stranded.
DEADLINE = 40.0
SETTLE = DEADLINE + 30.0  # how long the end of a run waits for the last receipts
TOOL = "faulty/append_row"
SUBMIT_GIVE_UP = 120.0  # seconds an agent keeps retrying one submission


@dataclass
class Summary:
    scenario: str
    acked: int = 0
    receipts: int = 0
    twice_receipted: int = 0
    stranded: int = 0
    rows_twice: int = 0
    succeeded_without_row: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    stranded_at: Counter[str] = field(default_factory=Counter)  # last event of each stranded intent
    submit_errors: int = 0
    longest_submit_outage: float = 0.0
    recovery: float | None = None
    note: str = ""


SUMMARY: list[Summary] = []


@pytest.fixture(scope="module", autouse=True)
def print_summary() -> Iterator[None]:
    yield
    if not SUMMARY:
        return
    head = (
        f"{'scenario':24} {'acked':>6} {'receipts':>8} {'2x rcpt':>7} {'stranded':>8} {'2x rows':>7} "
        f"{'ok no row':>9} {'submit err':>10} {'outage s':>8} {'recovery s':>10}  statuses / note"
    )
    lines = ["", "cluster soak (3 nats-servers, R3 streams, faulty/append_row)", head]
    for s in SUMMARY:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(s.statuses.items()))
        if s.stranded_at:
            statuses += "; stranded after " + ", ".join(f"{k} {v}" for k, v in sorted(s.stranded_at.items()))
        recovery = f"{s.recovery:.2f}" if s.recovery is not None else "-"
        lines.append(
            f"{s.scenario:24} {s.acked:6} {s.receipts:8} {s.twice_receipted:7} {s.stranded:8} {s.rows_twice:7} "
            f"{s.succeeded_without_row:9} {s.submit_errors:10} {s.longest_submit_outage:8.2f} {recovery:>10}  {statuses}"
            + (f" · {s.note}" if s.note else "")
        )
    print("\n".join(lines))


@pytest.fixture(scope="module")
def fault_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    data_dir = tmp_path_factory.mktemp("cluster-soak") / "data"
    with Plane(data_dir, nats_port=free_port(), redis_port=free_port(), cluster=3) as plane:
        plane.wait_ready(timeout=120)
        yield plane


class Load:
    """An agent submitting ``faulty/append_row`` calls, ``CONCURRENCY`` at a time. A submission that
    fails (no stream leader, a lost connection) is retried with the same idempotency key until the
    server acknowledges it: only acknowledged intents are owed a receipt."""

    def __init__(self, rig: Rig, run: str) -> None:
        self.rig, self.run = rig, run
        self.acked: dict[str, str] = {}  # intent id -> row token
        self.errors = 0
        self.longest_outage = 0.0

    async def submit(self, token: str) -> Submission:
        first_failure: float | None = None
        while True:
            try:
                submission = await asyncio.wait_for(
                    self.rig.agent.submit(TOOL, {"token": token}, idempotency_key=token, deadline_seconds=DEADLINE),
                    10.0,
                )
            except Exception:  # no stream leader, a lost connection...: nats-py's errors share no base
                self.errors += 1
                first_failure = first_failure or time.monotonic()
                if time.monotonic() - first_failure > SUBMIT_GIVE_UP:
                    raise
                await asyncio.sleep(0.25)
                continue
            if first_failure is not None:
                self.longest_outage = max(self.longest_outage, time.monotonic() - first_failure)
            self.acked[submission.intent_id] = token
            return submission

    async def drive(self, n: int, started: asyncio.Event | None = None) -> None:
        queue = list(range(n))

        async def worker() -> None:
            while queue:
                i = queue.pop(0)
                await self.submit(f"{self.run}-{i}")
                if started is not None and len(self.acked) >= n // 3:
                    started.set()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def intents_leader(rig: Rig) -> tuple[str, list[str]]:
    """The WRIT_INTENTS stream's leader and followers, as plane unit names (``nats-2``)."""
    info = await rig.nc.jetstream().stream_info(subjects.INTENTS_STREAM)
    assert info.cluster is not None and info.cluster.leader, "the intents stream has no leader"
    followers = [r.name for r in info.cluster.replicas or []]
    return str(info.cluster.leader), followers


async def probe_recovery(rig: Rig, since: float, run: str) -> float:
    """Seconds from ``since`` until a call submitted now has its receipt (the plane works again)."""
    load = Load(rig, run)
    submission = await load.submit(f"{run}-probe")
    await wait_receipt(rig.nc, submission.intent_id, timeout=SETTLE)
    return time.monotonic() - since


def rows_by_token(db: Path) -> Counter[str]:
    with sqlite3.connect(db, timeout=30) as conn:
        return Counter(token for (token,) in conn.execute("SELECT token FROM rows"))


async def settle(rig: Rig, summary: Summary, acked: dict[str, str]) -> None:
    """Wait for every acknowledged intent's receipt (up to ``SETTLE`` s), then count."""

    async def one(intent_id: str) -> ev.Receipt | None:
        with contextlib.suppress(ReceiptTimeout):
            return await wait_receipt(rig.nc, intent_id, timeout=SETTLE)
        return None

    found = await asyncio.gather(*(one(i) for i in acked))
    per_intent = Counter(r.intent_id for r in await all_receipts(rig.nc))
    rows = rows_by_token(rig.faulty_db)
    summary.acked = len(acked)
    summary.receipts = sum(1 for r in found if r is not None)
    summary.twice_receipted = sum(1 for i in acked if per_intent[i] > 1)
    summary.stranded = sum(1 for r in found if r is None)
    summary.rows_twice = sum(1 for t in acked.values() if rows[t] > 1)
    summary.statuses = Counter(r.status for r in found if r is not None)
    for intent_id, receipt in zip(acked, found, strict=True):
        if receipt is None:
            history = await read_history(rig.nc, rig.agent.agent_id, intent_id)
            last = history.events[-1].type if history.events else "nothing"
            ran = " (row written)" if rows[acked[intent_id]] else ""
            summary.stranded_at[last + ran] += 1
    summary.succeeded_without_row = sum(
        1
        for i, r in zip(acked, found, strict=True)
        if r is not None and r.status == "succeeded" and rows[acked[i]] != 1
    )


def assert_promises(summary: Summary) -> None:
    assert summary.rows_twice == 0, f"{summary.scenario}: a row written twice"
    assert summary.twice_receipted == 0, f"{summary.scenario}: an intent with two receipts"
    assert summary.stranded == 0, f"{summary.scenario}: {summary.stranded} acknowledged intents without a receipt"
    assert summary.succeeded_without_row == 0, f"{summary.scenario}: succeeded without exactly one row"


async def wait_cluster_whole(rig: Rig) -> None:
    for name in rig.plane.nats_units:

        def running(name: str = name) -> bool:
            return rig.plane.status_of(name).state == "running"

        deadline = time.monotonic() + 60
        while not running():
            assert time.monotonic() < deadline, f"{name} not running again"
            await asyncio.sleep(0.1)
    await asyncio.to_thread(rig.plane.wait_nats_healthy, 60)
    await asyncio.to_thread(rig.plane.wait_ready, 60)


@contextlib.asynccontextmanager
async def under_load(rig: Rig, run: str, summary: Summary) -> AsyncIterator[Load]:
    """``INTENTS`` calls driven while the body runs (it starts a third of the way in); then every
    acknowledged one waited for and counted into ``summary``."""
    load = Load(rig, run)
    started = asyncio.Event()
    driving = asyncio.create_task(load.drive(INTENTS, started))
    try:
        await asyncio.wait_for(started.wait(), 120)
        yield load
        await driving
    finally:
        driving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await driving
    summary.submit_errors, summary.longest_submit_outage = load.errors, load.longest_outage
    await settle(rig, summary, load.acked)


async def run_fault(rig: Rig, scenario: str, fault: str) -> None:
    run = f"{scenario}-{uuid.uuid4().hex[:6]}"
    summary = Summary(scenario)
    SUMMARY.append(summary)
    await wait_cluster_whole(rig)
    async with under_load(rig, run, summary):
        leader, followers = await intents_leader(rig)
        rng = random.Random(run)
        struck = time.monotonic()
        if fault == "leader":
            await asyncio.to_thread(rig.plane.kill_service, leader)  # the supervisor restarts it
            summary.note = f"killed leader {leader}"
        elif fault == "follower":
            victim = rng.choice(followers)
            await asyncio.to_thread(rig.plane.kill_service, victim)
            summary.note = f"killed follower {victim} (leader {leader})"
        elif fault == "all":
            # Every node at once: consumers kept on one node (the default) keep their progress on
            # file; replicated ones (WRIT_CONSUMER_REPLICAS=0) keep it in memory, lose it, and the
            # stages replay the stream: still nothing twice, nothing lost.
            stage = await rig.nc.jetstream().consumer_info(subjects.INTENTS_STREAM, "writ-policy")
            in_memory = WritSettings(stream_replicas=3).consumer_state_in_memory  # as this run's env says
            assert bool(stage.config.mem_storage) is in_memory, "the stages' consumers keep their state elsewhere"
            for name in rig.plane.nats_units:
                await asyncio.to_thread(rig.plane.hold_service, name, kill=True)
            summary.note = f"SIGKILLed every node at once ({'memory' if in_memory else 'file'}-state consumers)"
            await asyncio.sleep(2.0)
            for name in rig.plane.nats_units:
                await asyncio.to_thread(rig.plane.release_service, name)
        else:
            down = [leader, rng.choice(followers)]
            for name in down:
                await asyncio.to_thread(rig.plane.hold_service, name, kill=True)
            summary.note = f"SIGKILLed {', '.join(down)} for {DOWN_SECONDS:g} s"
            await asyncio.sleep(DOWN_SECONDS)
            for name in down:
                await asyncio.to_thread(rig.plane.release_service, name)
        summary.recovery = await probe_recovery(rig, struck, run)
    await wait_cluster_whole(rig)
    assert_promises(summary)


async def test_killing_the_intents_stream_leader_under_load(rig: Rig) -> None:
    await run_fault(rig, "kill intents leader", "leader")


async def test_killing_a_follower_under_load(rig: Rig) -> None:
    await run_fault(rig, "kill a follower", "follower")


async def test_two_of_three_nodes_down_for_10s_under_load(rig: Rig) -> None:
    await run_fault(rig, "2 of 3 down 10 s", "two")


async def test_every_node_killed_at_once_under_load(rig: Rig) -> None:
    await run_fault(rig, "all 3 killed at once", "all")


async def test_steady_state_sequential_intents_none_stranded(rig: Rig) -> None:
    run = f"steady-{uuid.uuid4().hex[:6]}"
    summary = Summary(f"steady {STEADY} sequential")
    SUMMARY.append(summary)
    await wait_cluster_whole(rig)
    load = Load(rig, run)
    slow: dict[str, str] = {}
    began = time.monotonic()
    for i in range(STEADY):
        submission = await load.submit(f"{run}-{i}")
        try:
            await wait_receipt(rig.nc, submission.intent_id, timeout=10)
        except ReceiptTimeout:
            slow[submission.intent_id] = f"{run}-{i}"  # counted at the end: late or stranded
    elapsed = time.monotonic() - began
    summary.submit_errors, summary.longest_submit_outage = load.errors, load.longest_outage
    await settle(rig, summary, load.acked)
    summary.note = f"{elapsed / max(1, STEADY) * 1000:.0f} ms per intent; {len(slow)} took over 10 s"
    assert_promises(summary)


async def test_a_node_lost_for_good_is_removed_and_the_stages_go_on_from_their_progress(rig: Rig) -> None:
    """Last in the module: the node stays gone. The stages' consumers kept on it alone (the
    default, WRIT_CONSUMER_REPLICAS=1) wait while it is down; `writ bus remove-node` takes it out of the
    cluster, JetStream places those consumers on the others with no progress, and each service
    resets its own to the ack floor it had seen (one of them restarted meanwhile: to the floor kept
    in its consumer's metadata): every acked intent still ends in exactly one
    receipt, with no row twice and no replay of the stream."""
    if WritSettings(stream_replicas=3).consumer_replicas != 1:
        pytest.skip("the stages' consumers are replicated (WRIT_CONSUMER_REPLICAS=0): a lost node takes none away")
    run = f"lost-{uuid.uuid4().hex[:6]}"
    summary = Summary("a node lost for good")
    SUMMARY.append(summary)
    await wait_cluster_whole(rig)
    js = rig.nc.jetstream()
    placed: dict[str, str] = {}  # service -> node holding its consumer
    for service in topology.SERVICES:
        info = await js.consumer_info(subjects.INTENTS_STREAM, busauth.durable_of(service))
        assert info.cluster is not None and info.cluster.leader and not info.cluster.replicas, info.cluster
        placed[service] = str(info.cluster.leader)
    victim = Counter(placed.values()).most_common(1)[0][0]
    stranded_stages = sorted(s for s, node in placed.items() if node == victim)
    noticed_before = {s: await lost_progress_noticed(rig.plane, s) for s in stranded_stages}
    # Progress each service has seen (its guard reads the ack floor every CHECK_INTERVAL seconds)
    # and has kept in its consumer's metadata.
    warm = Load(rig, f"{run}-warm")
    await warm.drive(INTENTS // 4)
    await settle(rig, Summary("warm-up"), warm.acked)
    await asyncio.sleep(CHECK_INTERVAL + 1.0)
    for service in stranded_stages:
        info = await js.consumer_info(subjects.INTENTS_STREAM, busauth.durable_of(service))
        assert kept_floor(info.config) > 0, f"{service} kept no floor in its consumer"

    async with under_load(rig, run, summary):
        floors = {}
        for service in stranded_stages:
            info = await js.consumer_info(subjects.INTENTS_STREAM, busauth.durable_of(service))
            floors[service] = info.ack_floor.stream_seq if info.ack_floor else 0
        struck = time.monotonic()
        await asyncio.to_thread(rig.plane.hold_service, victim, kill=True)  # and never released
        # One of those services restarts meanwhile: it has seen no floor of its own, and moves
        # its consumer back by the floor kept in the consumer's metadata.
        restarted = stranded_stages[0]
        await asyncio.to_thread(rig.plane.restart_service, restarted)
        await asyncio.sleep(DOWN_SECONDS / 2)  # an operator notices: the stages on it wait meanwhile
        removed = await asyncio.to_thread(
            CliRunner().invoke, app, ["--data-dir", str(rig.plane.data_dir), "bus", "remove-node", victim]
        )
        assert removed.exit_code == 0, removed.output
        summary.note = f"SIGKILLed {victim} for good (it held {', '.join(stranded_stages)}), restarted {restarted}, then remove-node"
        summary.recovery = await probe_recovery(rig, struck, run)
    assert_promises(summary)
    for service in stranded_stages:
        info = await js.consumer_info(subjects.INTENTS_STREAM, busauth.durable_of(service))
        assert info.cluster is not None and info.cluster.leader not in (None, victim), (service, info.cluster)
        assert info.ack_floor is not None and info.ack_floor.stream_seq >= floors[service], service
        deadline = time.monotonic() + 10
        before = 0.0 if service == restarted else noticed_before[service]  # a new process counts from 0
        while await lost_progress_noticed(rig.plane, service) <= before:
            assert time.monotonic() < deadline, f"{service} did not notice that its consumer lost its progress"
            await asyncio.sleep(0.2)
