"""Nothing lost, nothing twice: real processes killed with SIGKILL mid-run, on a real plane.

Each scenario drives intents through the embedded plane (separate service processes, nats-server
with fsync always, Redis) against real side-effecting MCP servers, kills something, and then
checks the promises: every intent has exactly one receipt, every succeeded call wrote exactly
one row, no row was written twice, and outcome_unknown appears only where a non-idempotent call
was really interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from rig import (
    PERMIT_ALL,
    Rig,
    all_receipts,
    assert_chain_verifies,
    receipts_of,
    row_counts,
    submit_rows,
    submit_until,
)

from plane_metrics import metric_value
from waiting import reached, wait_until
from writ.approver import ApproverClient
from writ.runtime.processes import HOST, free_port
from writ.runtime.supervisor import Plane
from writ.sdk import wait_receipt
from writ.synthetic import producer_of
from writ_common import commands, subjects
from writ_common import events as ev
from writ_common.bus import append_control, direct_get_batch, last_on_subject, read_history
from writ_common.envelope import decode, make_envelope, parse_time
from writ_common.signing import generate_key, public_key_b64
from writ_policy.domain import compile_bundle

pytestmark = [pytest.mark.fault, pytest.mark.asyncio(loop_scope="session")]

# `make soak` raises these (WRIT_SOAK_INTENTS, WRIT_SOAK_KILLS) and prints the summary table.
INTENTS_PER_RUN = int(os.environ.get("WRIT_SOAK_INTENTS", "200"))
# SIGKILLs per service in CI; the first is followed by the armed hook, a second death right after an
# append and before its ack. `make soak` raises it.
KILLS_PER_RUN = int(os.environ.get("WRIT_SOAK_KILLS", "1"))


@dataclass
class RunSummary:
    killed: str
    intents: int = 0
    receipts: int = 0
    duplicates: int = 0
    lost: int = 0
    outcome_unknown: int = 0
    recoveries: list[float] = field(default_factory=list)


SUMMARY: list[RunSummary] = []


@pytest.fixture(scope="module", autouse=True)
def print_summary() -> Iterator[None]:
    yield
    if not SUMMARY:
        return
    lines = [
        "",
        f"{'killed':10} {'intents':>8} {'receipts':>9} {'duplicates':>11} {'lost':>5} {'unknown':>8}  recovery s (restart -> first new receipt)",
    ]
    for s in SUMMARY:
        recoveries = ", ".join(f"{r:.2f}" for r in s.recoveries) or "-"
        lines.append(
            f"{s.killed:10} {s.intents:8} {s.receipts:9} {s.duplicates:11} {s.lost:5} {s.outcome_unknown:8}  {recoveries}"
        )
    print("\n".join(lines))


@pytest.fixture(scope="module")
def fault_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    data_dir = tmp_path_factory.mktemp("fault") / "data"
    with Plane(data_dir, nats_port=free_port(), redis_port=free_port(), fault_hooks=True) as plane:
        plane.wait_ready(timeout=60)
        yield plane


async def ledger_head(nc: Client) -> int:
    return int((await nc.jetstream().stream_info(subjects.LEDGER_STREAM)).state.last_seq)


async def killer(rig: Rig, service: str, kills: int, run: str, summary: RunSummary) -> dict[str, str]:
    """SIGKILL ``service`` at random moments. After the first kill, arm the fault hook, so the
    restarted process dies right after an append and before its ack, and submit intents until
    it has. Records the recovery time: from the restarted process running to the next receipt
    the ledger stores. Returns the intents it submitted itself (intent id -> row token)."""
    plane, rng = rig.plane, random.Random(f"{service}-kills")
    submitted: dict[str, str] = {}

    async def restarted(after: int) -> None:
        def running() -> bool:
            status = plane.status_of(service)
            return status.restarts >= after and status.state == "running"

        await wait_until(running, 30, f"{service} restarted {after} times and running")

    for k in range(kills):
        await asyncio.sleep(rng.uniform(0.2, 0.8))  # a random moment in the run, not a wait for state
        restarts = plane.status_of(service).restarts
        await asyncio.to_thread(plane.kill_service, service)
        await restarted(restarts + 1)
        if k == 0:
            with plane.arm_fault(service, after_appends=3) as fired:
                submitted |= await submit_until(rig, fired, f"{run}-hook")
                await restarted(restarts + 2)
        began, head = time.monotonic(), await ledger_head(rig.nc)
        if await reached(lambda h=head: _ledger_moved(rig.nc, h), 10):
            summary.recoveries.append(time.monotonic() - began)
        await asyncio.to_thread(plane.wait_ready, 60)
    return submitted


async def _ledger_moved(nc: Client, head: int) -> bool:
    return await ledger_head(nc) > head


@pytest.mark.parametrize("service", ["identity", "registry", "policy", "executor", "ledger"])
async def test_killing_a_service_mid_run_loses_nothing_and_runs_nothing_twice(rig: Rig, service: str) -> None:
    run = f"{service}-{uuid.uuid4().hex[:6]}"
    summary = RunSummary(killed=service)
    SUMMARY.append(summary)
    kills = asyncio.create_task(killer(rig, service, KILLS_PER_RUN, run, summary))
    try:
        tokens = await submit_rows(rig, INTENTS_PER_RUN, run)
        tokens |= await kills
    finally:
        # A failure here must not leave the killer (and its armed hook) running into the next test.
        kills.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await kills
    summary.intents = len(tokens)
    receipts = await receipts_of(rig, list(tokens))

    per_intent = Counter(r.intent_id for r in await all_receipts(rig.nc))
    summary.receipts = sum(per_intent[i] for i in tokens)
    summary.duplicates = sum(per_intent[i] - 1 for i in tokens if per_intent[i] > 1)
    summary.lost = sum(1 for i in tokens if per_intent[i] == 0)
    summary.outcome_unknown = sum(1 for r in receipts.values() if r.status == "outcome_unknown")
    wrong = {i: per_intent[i] for i in tokens if per_intent[i] != 1}
    assert not wrong, f"every intent has exactly one receipt: {wrong}"
    rows = row_counts(rig.sqlite_db)
    assert all(rows[t] <= 1 for t in tokens.values()), "no row written twice"
    statuses = Counter(r.status for r in receipts.values())
    for intent_id, receipt in receipts.items():
        written = rows[tokens[intent_id]]
        if receipt.status == "succeeded":
            assert written == 1, f"{intent_id}: succeeded but wrote {written} rows"
        else:
            assert receipt.status == "outcome_unknown", f"{intent_id}: {receipt.status}: {receipt.reason}"
    if service != "executor":
        assert statuses == {"succeeded": len(tokens)}
    else:
        for intent_id, receipt in receipts.items():
            if receipt.status == "outcome_unknown":
                view = await read_history(rig.nc, "fault-agent", intent_id)
                types = [e.type for e in view.events]
                # Interrupted for real: started, then nothing from that attempt until outcome_unknown.
                assert types[-2:] == ["execution.started", "execution.outcome_unknown"]
    await assert_chain_verifies(rig)


async def test_killing_the_nats_server_loses_no_acknowledged_intent(rig: Rig) -> None:
    run = f"nats-{uuid.uuid4().hex[:6]}"
    first = await submit_rows(rig, 50, run + "a")
    await asyncio.to_thread(rig.plane.kill_service, "nats")
    await asyncio.to_thread(rig.plane.wait_ready, 60)
    second = await submit_rows(rig, 50, run + "b")
    receipts = await receipts_of(rig, [*first, *second])
    assert len(receipts) == 100  # every intent the server acknowledged came back with its receipt
    rows = row_counts(rig.sqlite_db)
    tokens = {**first, **second}
    for intent_id, receipt in receipts.items():
        assert rows[tokens[intent_id]] == (1 if receipt.status == "succeeded" else rows[tokens[intent_id]])
        assert rows[tokens[intent_id]] <= 1
        # The executor never died: a lost ack is resolved by looking, never taken for an interrupted call.
        assert receipt.status == "succeeded", f"{intent_id}: {receipt.status}: {receipt.reason}"


# Lost acks: nats-server killed three times while 80 row writes are in flight (on this module's
# plane: one plane start fewer than a module of its own; its fault hook is never armed here).
LOST_ACK_INTENTS = 80
NATS_KILLS = 3


async def kill_nats_repeatedly(rig: Rig, kills: int) -> None:
    rng = random.Random("lost-acks")
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(0.3, 1.0))
        await asyncio.to_thread(rig.plane.kill_service, "nats")
        await asyncio.to_thread(rig.plane.wait_ready, 90)


async def test_killing_nats_under_load_makes_no_outcome_unknown_and_nothing_twice(rig: Rig) -> None:
    """Lost answers are resolved by looking, not guessed: the embedded nats-server is SIGKILLed (and
    restarted) while intents to a non-idempotent row-writing tool are in flight, so appends around
    ``execution.started`` and the verdict lose their acks. The executor never dies here, so no intent
    may end ``outcome_unknown``: every call whose start was stored is made once and its outcome
    recorded; a start never stored is simply made (once) later."""
    run = f"lost-{uuid.uuid4().hex[:6]}"
    executor_restarts = rig.plane.status_of("executor").restarts
    kills = asyncio.create_task(kill_nats_repeatedly(rig, NATS_KILLS))
    tokens = await submit_rows(rig, LOST_ACK_INTENTS, run)
    await kills
    receipts = await receipts_of(rig, list(tokens), timeout=180)

    assert rig.plane.status_of("executor").restarts == executor_restarts, "the executor never died"
    per_intent = Counter(r.intent_id for r in await all_receipts(rig.nc))
    wrong = {i: per_intent[i] for i in tokens if per_intent[i] != 1}
    assert not wrong, f"every intent has exactly one receipt: {wrong}"
    rows = row_counts(rig.sqlite_db)
    statuses = Counter(r.status for r in receipts.values())
    assert statuses == {"succeeded": LOST_ACK_INTENTS}, {
        i: (r.status, r.reason) for i, r in receipts.items() if r.status != "succeeded"
    }
    for intent_id in receipts:
        assert rows[tokens[intent_id]] == 1, f"{intent_id}: wrote {rows[tokens[intent_id]]} rows"
    await assert_chain_verifies(rig)


async def test_a_service_whose_metrics_port_was_taken_comes_back_on_another(rig: Rig) -> None:
    plane = rig.plane
    old = plane.metrics_url("policy")
    assert old is not None
    restarts = plane.status_of("policy").restarts
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await asyncio.to_thread(plane.kill_service, "policy")
        # Someone else takes the port before the restart (the supervisor waits its backoff first).
        squatter.bind((HOST, int(old.rsplit(":", 1)[1].split("/", 1)[0])))
        squatter.listen()
        await asyncio.to_thread(plane.wait_ready, 60)

        def reported_a_new_port() -> bool:
            url = plane.metrics_url("policy")
            return url is not None and url != old

        await wait_until(reported_a_new_port, 30, "policy serving /metrics on a new port")
        assert plane.status_of("policy").restarts == restarts + 1, "one restart, no crash loop"
        assert await metric_value(plane, "policy", "writ_redeliveries_total") >= 0  # it answers

        def listed_in_runtime_file() -> bool:
            runtime = json.loads((plane.data_dir / "runtime.json").read_text())
            return bool(runtime["metrics"].get("policy") == plane.metrics_url("policy"))

        await wait_until(listed_in_runtime_file, 10, "runtime.json names the new port")


async def test_a_crashing_tool_server_is_restarted_and_the_breaker_opens_and_closes(
    rig: Rig, tmp_path: Path, faulty_mcp: Callable[[Path], tuple[list[str], dict[str, str]]]
) -> None:
    # A server started through a script we can break: the way an operator's binary disappears.
    argv, env = faulty_mcp(tmp_path / "flaky.sqlite3")
    script = tmp_path / "flaky-server.sh"
    working = "#!/bin/sh\n" + " ".join(f"'{a}'" for a in argv) + ' "$@"\n'
    script.write_text(working.replace("#!/bin/sh\n", "#!/bin/sh\nexec "))
    script.chmod(0o755)
    await commands.call(rig.nc, "registry", "add_server", {"name": "flaky", "command": str(script), "env": env})

    # The process dies mid-call: not idempotent -> outcome_unknown, never retried blindly.
    crashed = await rig.agent.call("flaky/crash", {}, timeout=60)
    assert crashed.status == "outcome_unknown", crashed.reason
    # The executor starts a fresh process for the next call.
    ok = await rig.agent.call("flaky/put", {"key": "k", "value": "v"}, timeout=60)
    assert ok.status == "succeeded", ok.reason

    # Now the server cannot start: attempts are retried, then the breaker opens and fails fast.
    await rig.agent.call("flaky/crash", {}, timeout=60)
    script.write_text("#!/bin/sh\nexit 1\n")
    failures = [await rig.agent.call("flaky/put", {"key": f"k{i}", "value": "v"}, timeout=60) for i in range(3)]
    assert {f.status for f in failures} == {"failed"}, [f.reason for f in failures]
    assert failures[0].code == "server_unavailable" and "gave up after 3 attempts" in failures[0].reason
    assert any(f.code == "circuit_open" for f in failures), [f.reason for f in failures]

    script.write_text(working.replace("#!/bin/sh\n", "#!/bin/sh\nexec "))
    await asyncio.sleep(5.5)  # the breaker's cooldown
    healed = await rig.agent.call("flaky/put", {"key": "k-after", "value": "v"}, timeout=60)
    assert healed.status == "succeeded", healed.reason
    msgs = await direct_get_batch(rig.nc, subjects.EXECUTOR_STREAM, subjects.breaker_subject("flaky"))
    moves = [
        (p.from_state, p.to_state)
        for p in (decode(m.data).payload for m in msgs)
        if isinstance(p, ev.BreakerTransitioned)
    ]
    assert ("closed", "open") in moves and ("half_open", "closed") in moves


async def test_a_clean_restart_lets_the_call_in_flight_finish(rig: Rig) -> None:
    """A clean stop (SIGTERM: a rolling restart, `writ up` ending) while a non-idempotent call runs
    longer than a nats-server is given to stop: the executor drains the call, so it ends succeeded,
    its row written once, not cut off by a SIGKILL into outcome_unknown."""
    token = f"drain-{uuid.uuid4().hex}"
    submission = await rig.agent.submit("faulty/slow", {"seconds": 12, "token": token})

    async def started() -> bool:
        history = await read_history(rig.nc, rig.agent.agent_id, submission.intent_id)
        return any(e.type == "execution.started" for e in history.events)

    await wait_until(started, 30, "the slow call started")
    await asyncio.to_thread(rig.plane.restart_service, "executor")
    receipt = await wait_receipt(rig.nc, submission.intent_id, 90, agent_id=rig.agent.agent_id)
    assert receipt.status == "succeeded", receipt.reason
    assert row_counts(rig.faulty_db)[token] == 1


async def test_an_idempotent_put_honours_the_key_across_attempts(rig: Rig) -> None:
    receipt = await rig.agent.call("faulty/put", {"key": "same", "value": "once"}, idempotency_key="idem-1", timeout=60)
    again = await rig.agent.call("faulty/put", {"key": "same", "value": "once"}, idempotency_key="idem-1", timeout=60)
    assert receipt.intent_id == again.intent_id and receipt.receipt_hash == again.receipt_hash


async def test_the_idempotency_key_reaches_a_tool_that_takes_it_as_an_argument(rig: Rig) -> None:
    body = {"server": "faulty", "tool": "put", "idempotency_arg": "key"}
    await commands.call(rig.nc, "registry", "set_override", body)
    try:
        receipt = await rig.agent.call("faulty/put", {"key": "ignored", "value": "v"}, timeout=60)
        assert receipt.status == "succeeded", receipt.reason
        assert receipt.result is not None
        assert receipt.result["content"][0]["text"] == f"stored {receipt.intent_id}=v"
    finally:
        await commands.call(rig.nc, "registry", "set_override", {"server": "faulty", "tool": "put"})


async def test_an_intent_whose_deadline_passes_while_it_waits_ends_expired(rig: Rig) -> None:
    await asyncio.to_thread(rig.plane.hold_service, "executor")
    try:
        submission = await rig.agent.submit("faulty/count", {}, deadline_seconds=4.0)
        submitted = time.monotonic()

        async def authorized() -> bool:
            history = await read_history(rig.nc, rig.agent.agent_id, submission.intent_id)
            return bool(history.events) and history.events[-1].type == "intent.authorized"

        # Authorized in time, then the deadline passes while it waits for the (held) executor.
        await wait_until(authorized, 4, "authorized before its deadline")
        await asyncio.sleep(max(0.0, submitted + 4.5 - time.monotonic()))  # time itself must pass
    finally:
        await asyncio.to_thread(rig.plane.release_service, "executor")
    receipt = await wait_receipt(rig.nc, submission.intent_id, timeout=60)
    assert (receipt.status, receipt.stage, receipt.code) == ("expired", "execute", "deadline_exceeded")


async def settled_views(nc: Any) -> dict[str, Any]:
    """The views' snapshot once two in a row, a second apart, cover the same stream positions:
    earlier tests' stragglers (a retry, a late receipt) have landed."""
    seen = [await commands.call(nc, "ledger", "views_digest", {})]

    async def settled() -> bool:
        await asyncio.sleep(1.0)  # the interval that counts as "still": the poll is this slow
        seen.append(await commands.call(nc, "ledger", "views_digest", {}))
        return bool(seen[-1]["positions"] == seen[-2]["positions"])

    await wait_until(settled, 30, f"the log stops moving (at {seen[-1]['positions']})")
    return dict(seen[-1])


async def test_replay_from_nothing_rebuilds_identical_views(rig: Rig) -> None:
    before = await settled_views(rig.nc)
    await asyncio.to_thread(rig.plane.hold_service, "ledger")
    for path in (rig.plane.data_dir / "ledger").glob("views.sqlite3*"):
        path.unlink()
    await asyncio.to_thread(rig.plane.release_service, "ledger")
    await asyncio.to_thread(rig.plane.wait_ready, 60)
    after = await commands.call(rig.nc, "ledger", "views_digest", {})
    assert after["positions"] == before["positions"]
    assert after["tables"] == before["tables"]
    assert after["digest"] == before["digest"]


async def test_with_redis_down_nothing_runs_and_the_plane_recovers_by_itself(rig: Rig) -> None:
    async def identity_failures() -> float:
        return await metric_value(rig.plane, "identity", "writ_redeliveries_total", service="identity", why="error")

    before = await identity_failures()
    await asyncio.to_thread(rig.plane.hold_service, "redis")
    try:
        submission = await rig.agent.submit("faulty/put", {"key": "redis-down", "value": "v"})

        async def identity_tried_twice() -> bool:
            return await identity_failures() >= before + 2

        # Identity took the intent and failed on its nonce check (no Redis), and again on redelivery.
        await wait_until(identity_tried_twice, 30, "identity failing without Redis")
        history = await read_history(rig.nc, "fault-agent", submission.intent_id)
        # Fail closed: no nonce check, no lease -> no execution, and no receipt either.
        assert not any(e.type == "execution.started" for e in history.events)
        assert not history.events[-1].type.startswith("execution.")
    finally:
        await asyncio.to_thread(rig.plane.release_service, "redis")
    receipt = await wait_receipt(rig.nc, submission.intent_id, timeout=60)
    assert receipt.status == "succeeded", receipt.reason


APPROVE_APPEND = PERMIT_ALL + (
    '@id("append-needs-approval") @approval("ops") @quorum("1") @ttl("6")\n'
    'permit(principal, action == Action::"call_tool", resource) when { resource.name == "append_row" };\n'
)


async def pending_for(client: ApproverClient, intent_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    async def pending() -> bool:
        with contextlib.suppress(commands.CommandError):  # the policy service may be restarting
            found[:] = [r for r in await client.pending() if r["intent_id"] == intent_id]
        return bool(found)

    await wait_until(pending, 20, f"a pending approval for {intent_id}")
    return found[0]


async def ops_approver(rig: Rig, approver_id: str) -> ApproverClient:
    """A new approver in the ``ops`` group, registered with identity."""
    key = generate_key()
    body = {"approver_id": approver_id, "public_key": public_key_b64(key), "groups": ["ops"]}
    await commands.call(rig.nc, "identity", "register_approver", body)
    return ApproverClient(rig.nc, approver_id, key)


async def test_a_pending_approval_survives_restarting_everything_then_runs_once(rig: Rig) -> None:
    approver = await ops_approver(rig, "ops-1")
    await commands.call(rig.nc, "policy", "load", {"cedar": APPROVE_APPEND.replace('@ttl("6")', '@ttl("120")')})
    try:
        token = f"approved-{uuid.uuid4().hex[:6]}"
        submission = await rig.agent.submit("faulty/append_row", {"token": token})
        await pending_for(approver, submission.intent_id)
        # Every service SIGKILLed at once (none is up to hold anything for another), then nats-server.
        for name in ("identity", "registry", "policy", "executor", "ledger"):
            await asyncio.to_thread(rig.plane.kill_service, name)
        await asyncio.to_thread(rig.plane.wait_ready, 60)
        await asyncio.to_thread(rig.plane.kill_service, "nats")
        await asyncio.to_thread(rig.plane.wait_ready, 60)
        request = await pending_for(approver, submission.intent_id)
        reply = await approver.decide(request, "grant")
        assert reply["outcome"] == "authorized"
        receipt = await wait_receipt(rig.nc, submission.intent_id, timeout=60)
        assert receipt.status == "succeeded" and receipt.approvers == ["ops-1"]
        with sqlite3.connect(rig.faulty_db) as db:
            assert db.execute("SELECT COUNT(*) FROM rows WHERE token = ?", (token,)).fetchone()[0] == 1

        # Expiry is read from the log: it fires even though policy was down when the time came.
        # Requests live 6 s: time enough to hold policy before this one expires.
        await commands.call(rig.nc, "policy", "load", {"cedar": APPROVE_APPEND})
        late = await rig.agent.submit("faulty/append_row", {"token": f"late-{token}"}, idempotency_key=f"late-{token}")
        expires_at = parse_time((await pending_for(approver, late.intent_id))["expires_at"])
        await asyncio.to_thread(rig.plane.hold_service, "policy")
        left = (expires_at - datetime.now(UTC)).total_seconds()
        assert left > 0, "policy went down only after the request expired"
        await asyncio.sleep(left + 1.0)  # the expiry comes and goes while policy is down
    finally:
        if rig.plane.status_of("policy").state == "held":
            await asyncio.to_thread(rig.plane.release_service, "policy")
        await asyncio.to_thread(rig.plane.wait_ready, 60)
        await commands.call(rig.nc, "policy", "load", {"cedar": PERMIT_ALL})
    expired = await wait_receipt(rig.nc, late.intent_id, timeout=60)
    assert (expired.status, expired.stage) == ("expired", "authorize"), expired.reason


async def test_a_bundle_loaded_while_policy_was_down_decides_the_waiting_request_when_it_comes_back(
    rig: Rig,
) -> None:
    """Another policy replica loaded an emergency forbid while this one was down: coming back, it
    takes up the request still waiting for people and decides it again under that bundle (denied,
    nothing runs), not only the requests made after it."""
    approver = await ops_approver(rig, "ops-2")
    waits_long = APPROVE_APPEND.replace('@ttl("6")', '@ttl("120")')
    forbid = waits_long + '@id("freeze") forbid(principal, action, resource) when { resource.name == "append_row" };\n'
    token = f"frozen-{uuid.uuid4().hex[:6]}"
    await commands.call(rig.nc, "policy", "load", {"cedar": waits_long})
    try:
        submission = await rig.agent.submit("faulty/append_row", {"token": token}, idempotency_key=token)
        await pending_for(approver, submission.intent_id)
        await asyncio.to_thread(rig.plane.hold_service, "policy")
        try:
            # What `writ policy load` on another replica appends: the bundle, fenced on the last one.
            bundle = compile_bundle(forbid)
            published = ev.PolicyBundlePublished(
                policy_digest=bundle.digest, cedar=bundle.cedar, policy_ids=bundle.names
            )
            js = rig.nc.jetstream()
            last = await last_on_subject(js, subjects.POLICY_STREAM, subjects.POLICY_SUBJECT)
            await append_control(
                js,
                subjects.POLICY_SUBJECT,
                make_envelope(published, producer=producer_of(published)),
                message_id=f"policy:{bundle.digest}",
                expected_last_subject_seq=last.seq if last is not None else 0,
            )
        finally:
            await asyncio.to_thread(rig.plane.release_service, "policy")
        receipt = await wait_receipt(rig.nc, submission.intent_id, timeout=60)
        assert (receipt.status, receipt.stage) == ("denied", "authorize"), receipt.reason
        with sqlite3.connect(rig.faulty_db) as db:
            assert db.execute("SELECT COUNT(*) FROM rows WHERE token = ?", (token,)).fetchone()[0] == 0
    finally:
        await asyncio.to_thread(rig.plane.wait_ready, 60)
        await commands.call(rig.nc, "policy", "load", {"cedar": PERMIT_ALL})
