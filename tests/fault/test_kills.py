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
import os
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
    wait_until,
)

from writ.approver import ApproverClient
from writ.runtime.processes import free_port
from writ.runtime.supervisor import Plane
from writ.sdk import wait_receipt
from writ_common import commands, subjects
from writ_common import events as ev
from writ_common.bus import direct_get_batch, read_history
from writ_common.envelope import decode
from writ_common.signing import generate_key, public_key_b64

pytestmark = [pytest.mark.fault, pytest.mark.asyncio(loop_scope="session")]

# `make soak` raises these (WRIT_SOAK_INTENTS, WRIT_SOAK_KILLS) and prints the summary table.
INTENTS_PER_RUN = int(os.environ.get("WRIT_SOAK_INTENTS", "200"))
KILLS_PER_RUN = int(os.environ.get("WRIT_SOAK_KILLS", "3"))


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
    with Plane(tmp_path_factory.mktemp("fault") / "data", nats_port=free_port(), redis_port=free_port()) as plane:
        plane.wait_ready(timeout=60)
        yield plane


async def killer(plane: Plane, nc: Client, service: str, kills: int, summary: RunSummary) -> None:
    """Kill ``service`` at random moments; once with the fault hook armed, so the restarted
    process dies right after an append and before its ack. Records the recovery time: from the
    restarted process running to the next receipt the ledger stores."""
    rng = random.Random(f"{service}-kills")
    for k in range(kills):
        await asyncio.sleep(rng.uniform(0.2, 0.8))
        if k == 0:
            plane.service_env[service] = {"WRIT_FAULT_EXIT_AFTER_APPENDS": "3"}
        restarts = plane.status_of(service).restarts
        await asyncio.to_thread(plane.kill_service, service)
        if k == 0:
            # The hook fired. Waits are long: the supervisor's backoff doubles on repeated crashes.
            await wait_until(lambda r=restarts: plane.status_of(service).restarts >= r + 2, 90)
            plane.service_env.pop(service, None)
        else:
            await wait_until(lambda r=restarts: plane.status_of(service).restarts > r, 90)
        await wait_until(lambda: plane.status_of(service).state == "running", 90)
        restarted = time.monotonic()
        head = (await nc.jetstream().stream_info(subjects.LEDGER_STREAM)).state.last_seq
        for _ in range(200):
            if (await nc.jetstream().stream_info(subjects.LEDGER_STREAM)).state.last_seq > head:
                summary.recoveries.append(time.monotonic() - restarted)
                break
            await asyncio.sleep(0.05)
        await asyncio.to_thread(plane.wait_ready, 60)


@pytest.mark.parametrize("service", ["identity", "registry", "policy", "executor", "ledger"])
async def test_killing_a_service_mid_run_loses_nothing_and_runs_nothing_twice(rig: Rig, service: str) -> None:
    run = f"{service}-{uuid.uuid4().hex[:6]}"
    summary = RunSummary(killed=service, intents=INTENTS_PER_RUN)
    SUMMARY.append(summary)
    kills = asyncio.create_task(killer(rig.plane, rig.nc, service, KILLS_PER_RUN, summary))
    tokens = await submit_rows(rig, INTENTS_PER_RUN, run)
    await kills
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
        assert statuses == {"succeeded": INTENTS_PER_RUN}
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
        # Authorized in time, then the deadline passes while it waits for the (held) executor.
        for _ in range(80):
            history = await read_history(rig.nc, rig.agent.agent_id, submission.intent_id)
            if history.events and history.events[-1].type == "intent.authorized":
                break
            await asyncio.sleep(0.05)
        assert history.events[-1].type == "intent.authorized", [e.type for e in history.events]
        await asyncio.sleep(max(0.0, submitted + 4.5 - time.monotonic()))
    finally:
        await asyncio.to_thread(rig.plane.release_service, "executor")
    receipt = await wait_receipt(rig.nc, submission.intent_id, timeout=60)
    assert (receipt.status, receipt.stage, receipt.code) == ("expired", "execute", "deadline_exceeded")


async def settled_views(nc: Any) -> dict[str, Any]:
    """The views' snapshot once two in a row, a second apart, cover the same stream positions:
    earlier tests' stragglers (a retry, a late receipt) have landed."""
    last = await commands.call(nc, "ledger", "views_digest", {})
    for _ in range(30):
        await asyncio.sleep(1.0)
        now = await commands.call(nc, "ledger", "views_digest", {})
        if now["positions"] == last["positions"]:
            return dict(now)
        last = now
    raise AssertionError(f"the log kept moving: {last['positions']}")


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
    await asyncio.to_thread(rig.plane.hold_service, "redis")
    try:
        submission = await rig.agent.submit("faulty/put", {"key": "redis-down", "value": "v"})
        await asyncio.sleep(3)
        history = await read_history(rig.nc, "fault-agent", submission.intent_id)
        # Fail closed: no nonce check, no lease -> no execution, and no receipt either.
        assert not any(e.type == "execution.started" for e in history.events)
        assert not history.events[-1].type.startswith("execution.")
    finally:
        await asyncio.to_thread(rig.plane.release_service, "redis")
    receipt = await wait_receipt(rig.nc, submission.intent_id, timeout=60)
    assert receipt.status == "succeeded", receipt.reason


APPROVE_APPEND = PERMIT_ALL + (
    '@id("append-needs-approval") @approval("ops") @quorum("1") @ttl("4")\n'
    'permit(principal, action == Action::"call_tool", resource) when { resource.name == "append_row" };\n'
)


async def pending_for(client: ApproverClient, intent_id: str) -> dict[str, Any]:
    for _ in range(400):
        with contextlib.suppress(commands.CommandError):  # the policy service may be restarting
            for request in await client.pending():
                if request["intent_id"] == intent_id:
                    return request
        await asyncio.sleep(0.05)
    raise AssertionError(f"no pending approval for {intent_id}")


async def test_a_pending_approval_survives_restarting_everything_then_runs_once(rig: Rig) -> None:
    key = generate_key()
    await commands.call(
        rig.nc,
        "identity",
        "register_approver",
        {"approver_id": "ops-1", "public_key": public_key_b64(key), "groups": ["ops"]},
    )
    approver = ApproverClient(rig.nc, "ops-1", key)
    await commands.call(rig.nc, "policy", "load", {"cedar": APPROVE_APPEND.replace('@ttl("4")', '@ttl("120")')})
    try:
        token = f"approved-{uuid.uuid4().hex[:6]}"
        submission = await rig.agent.submit("faulty/append_row", {"token": token})
        await pending_for(approver, submission.intent_id)
        for name in ("identity", "registry", "policy", "executor", "ledger", "nats"):
            await asyncio.to_thread(rig.plane.kill_service, name)
            await asyncio.to_thread(rig.plane.wait_ready, 60)
        request = await pending_for(approver, submission.intent_id)
        reply = await approver.decide(request, "grant")
        assert reply["outcome"] == "authorized"
        receipt = await wait_receipt(rig.nc, submission.intent_id, timeout=60)
        assert receipt.status == "succeeded" and receipt.approvers == ["ops-1"]
        with sqlite3.connect(rig.faulty_db) as db:
            assert db.execute("SELECT COUNT(*) FROM rows WHERE token = ?", (token,)).fetchone()[0] == 1

        # Expiry is read from the log: it fires even though policy was down when the time came.
        await commands.call(rig.nc, "policy", "load", {"cedar": APPROVE_APPEND})  # requests live 4 s
        late = await rig.agent.submit("faulty/append_row", {"token": f"late-{token}"}, idempotency_key=f"late-{token}")
        await pending_for(approver, late.intent_id)
        await asyncio.to_thread(rig.plane.hold_service, "policy")
        await asyncio.sleep(5)
    finally:
        if rig.plane.status_of("policy").state == "held":
            await asyncio.to_thread(rig.plane.release_service, "policy")
        await asyncio.to_thread(rig.plane.wait_ready, 60)
        await commands.call(rig.nc, "policy", "load", {"cedar": PERMIT_ALL})
    expired = await wait_receipt(rig.nc, late.intent_id, timeout=60)
    assert (expired.status, expired.stage) == ("expired", "authorize"), expired.reason
