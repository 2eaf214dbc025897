"""The ledger's views against the real services and nats-server: rows for an end-to-end intent in
every table, the HTTP API's bearer auth, filters and cursor pages, read-only SQL, rebuild, lag."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from inprocess import Spine

from writ.approver import ApproverClient
from writ_common import commands, metrics, subjects
from writ_common.commands import CommandError
from writ_common.signing import generate_key, public_key_b64
from writ_ledger.views.queries import WITHHELD, WITHHELD_FIELDS
from writ_ledger.views.runner import STREAMS, Views

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

POLICY = """
@id("time-reads")
permit(principal, action == Action::"call_tool", resource) when { resource.name == "get_current_time" };

@id("convert-needs-approval")
@approval("views-ops")
@quorum("1")
permit(principal, action == Action::"call_tool", resource) when { resource.name == "convert_time" };
"""


@dataclass(frozen=True)
class Story:
    """Three intents of the spine's agent: succeeded, approved then succeeded, rejected."""

    agent_id: str
    approver_id: str
    plain: str
    approved: str
    rejected: str


async def ledger(spine: Spine, command: str, body: dict[str, Any] | None = None) -> Any:
    return await commands.call(spine.nc, "ledger", command, body or {})


async def caught_up(spine: Spine) -> list[dict[str, Any]]:
    """Wait until the views have applied every stream up to its head."""
    for _ in range(200):
        status = await ledger(spine, "views_status")
        if all(s["events_behind"] == 0 for s in status["streams"]):
            return list(status["streams"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"the views did not catch up: {status}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def story(spine: Spine) -> Story:
    await commands.call(spine.nc, "policy", "load", {"cedar": POLICY})
    key, approver_id = generate_key(), f"views-{uuid.uuid4().hex[:6]}"
    body = {"approver_id": approver_id, "public_key": public_key_b64(key), "groups": ["views-ops"]}
    await commands.call(spine.nc, "identity", "register_approver", body)
    approver = ApproverClient(spine.nc, approver_id, key)

    plain = await spine.agent.call("get_current_time", {"timezone": "Europe/Paris"}, timeout=30)
    assert plain.status == "succeeded", plain.reason
    submission = await spine.agent.submit(
        "convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
    )
    for _ in range(200):
        pending = [r for r in await approver.pending() if r["intent_id"] == submission.intent_id]
        if pending:
            break
        await asyncio.sleep(0.05)
    assert (await approver.decide(pending[0], "grant"))["outcome"] == "authorized"
    from writ.sdk import wait_receipt

    approved = await wait_receipt(spine.nc, submission.intent_id, timeout=30)
    assert approved.status == "succeeded", approved.reason
    rejected = await spine.agent.call("get_current_time", {"timezone": 42}, timeout=30)
    assert rejected.status == "rejected"
    await caught_up(spine)
    return Story(spine.agent.agent_id, approver_id, plain.intent_id, approved.intent_id, rejected.intent_id)


def http(url: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def get(url: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(http, url, token)


async def new_token(spine: Spine, name: str, scope: str | None = None) -> str:
    token = "writv_" + secrets.token_urlsafe(32)
    digest = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    body = {"name": name, "token_hash": digest} | ({"scope": scope} if scope else {})
    await commands.call(spine.nc, "identity", "issue_reader_token", body)
    return token


async def test_an_approved_intent_has_rows_in_every_table(spine: Spine, story: Story) -> None:
    found = await ledger(spine, "views_intent", {"intent_id": story.approved})
    intent = found["intent"]
    assert (intent["status"], intent["agent_id"], intent["server"], intent["tool_name"]) == (
        "succeeded", story.agent_id, "time", "convert_time"
    )  # fmt: skip
    for stage in ("submitted_at", "authenticated_at", "planned_at", "approval_requested_at", "decided_at", "ended_at"):
        assert intent[stage], stage
    for duration in ("authenticate_ms", "plan_ms", "authorize_ms", "approval_ms", "execute_ms", "total_ms"):
        assert intent[duration] is not None and intent[duration] >= 0, duration
    assert [d["kind"] for d in found["decisions"]] == ["approval_requested", "authorized"]
    assert found["decisions"][-1]["policy_ids"] == ["convert-needs-approval"]
    assert found["decisions"][-1]["policy_digest"].startswith("sha256:")
    assert found["approval"]["status"] == "granted"
    assert found["approval"]["granted_by"] == [story.approver_id]
    assert [(e["attempt"], e["outcome"]) for e in found["executions"]] == [(1, "succeeded")]
    types = [e["type"] for e in found["events"]]
    assert types[0] == "intent.submitted" and types[-1] == "execution.succeeded"
    assert "approval.granted" in types
    assert found["receipt"]["intent_id"] == story.approved and found["receipt"]["status"] == "succeeded"

    async def one(sql: str) -> Any:
        return (await ledger(spine, "views_sql", {"sql": sql}))["rows"][0][0]

    assert await one(f"SELECT owner FROM agents WHERE agent_id = '{story.agent_id}'") == "unknown"
    assert await one("SELECT state FROM tools WHERE server = 'time' AND tool = 'convert_time'") == "accepted"
    assert await one("SELECT transport FROM servers WHERE name = 'time'") == "stdio"
    assert await one(f"SELECT decision FROM approval_decisions WHERE intent_id = '{story.approved}'") == "granted"
    assert await one(f"SELECT position FROM receipts WHERE intent_id = '{story.approved}'") >= 1
    calls = await one(
        f"SELECT SUM(calls), SUM(succeeded), SUM(rejections) FROM rollups WHERE agent_id = '{story.agent_id}'"
    )
    assert calls >= 3
    rejected = await ledger(spine, "views_intent", {"intent_id": story.rejected})
    assert (rejected["intent"]["status"], rejected["intent"]["stage"], rejected["intent"]["code"]) == (
        "rejected", "plan", "invalid_arguments"
    )  # fmt: skip


async def test_the_api_answers_only_a_valid_unrevoked_bearer_token(spine: Spine, story: Story) -> None:
    status, body = await get(f"{spine.views_url}/intents")
    assert (status, body["error"]) == (401, "unauthenticated")
    status, body = await get(f"{spine.views_url}/intents", token="writv_not-a-token")
    assert (status, body["error"]) == (401, "bad_token")
    name = f"reader-{uuid.uuid4().hex[:6]}"
    token = await new_token(spine, name)
    status, body = await get(f"{spine.views_url}/intents?agent={story.agent_id}", token=token)
    assert status == 200, body
    assert {story.plain, story.approved, story.rejected} <= {r["intent_id"] for r in body["intents"]}
    await commands.call(spine.nc, "identity", "revoke_reader_token", {"name": name})
    for _ in range(100):
        status, body = await get(f"{spine.views_url}/status", token=token)
        if status == 401:
            break
        await asyncio.sleep(0.05)
    assert (status, body["error"]) == (401, "bad_token")
    status, spec = await get(f"{spine.views_url}/openapi.json")
    assert status == 200 and {"/intents", "/intents/{intent_id}", "/stats", "/status"} <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_filters_and_cursor_pages_through_the_api(spine: Spine, story: Story) -> None:
    token = await new_token(spine, f"pager-{uuid.uuid4().hex[:6]}")
    base = f"{spine.views_url}/intents?agent={story.agent_id}&limit=1"
    seen: list[str] = []
    url = base
    while True:
        status, page = await get(url, token=token)
        assert status == 200, page
        seen += [r["intent_id"] for r in page["intents"]]
        if not page["next_cursor"]:
            break
        url = f"{base}&cursor={page['next_cursor']}"
    _, everything = await get(f"{spine.views_url}/intents?agent={story.agent_id}&limit=500", token=token)
    assert seen == [r["intent_id"] for r in everything["intents"]]  # every row once, newest first
    assert seen.index(story.rejected) < seen.index(story.approved) < seen.index(story.plain)

    _, rejected = await get(f"{spine.views_url}/intents?agent={story.agent_id}&status=rejected", token=token)
    assert story.rejected in {r["intent_id"] for r in rejected["intents"]}
    assert all(r["status"] == "rejected" for r in rejected["intents"])
    _, by_reason = await get(f"{spine.views_url}/intents?reason=invalid_arguments&tool=get_current_time", token=token)
    assert story.rejected in {r["intent_id"] for r in by_reason["intents"]}
    _, none = await get(f"{spine.views_url}/intents?agent={story.agent_id}&since=2999-01-01T00:00:00Z", token=token)
    assert none == {"intents": [], "next_cursor": None}
    status, bad = await get(f"{spine.views_url}/intents?cursor=garbage", token=token)
    assert (status, bad["error"]) == (400, "invalid_cursor")

    status, one = await get(f"{spine.views_url}/intents/{story.approved}", token=token)
    assert status == 200 and one["receipt"]["intent_id"] == story.approved
    assert one["receipt"]["status"] == "succeeded"
    status, stats = await get(f"{spine.views_url}/stats?by=tool", token=token)
    assert status == 200
    tools = {r["key"]: r for r in stats["rows"]}
    assert tools["convert_time"]["calls"] >= 1 and tools["convert_time"]["p50_ms"] > 0


async def test_a_summary_token_reads_no_arguments_or_results_and_a_full_one_does(spine: Spine, story: Story) -> None:
    summary = await new_token(spine, f"analyst-{uuid.uuid4().hex[:6]}")  # the command's default scope
    full = await new_token(spine, f"auditor-{uuid.uuid4().hex[:6]}", scope="full")
    url = f"{spine.views_url}/intents/{story.plain}"

    status, withheld = await get(url, token=summary)
    assert status == 200, withheld
    assert withheld["withheld"] == list(WITHHELD_FIELDS)
    submitted = next(e for e in withheld["events"] if e["type"] == "intent.submitted")
    succeeded = next(e for e in withheld["events"] if e["type"] == "execution.succeeded")
    assert submitted["payload"]["arguments"] == WITHHELD and succeeded["payload"]["result"] == WITHHELD
    assert withheld["receipt"]["result"] == WITHHELD and withheld["receipt"]["status"] == "succeeded"
    assert "Europe/Paris" not in json.dumps(withheld)  # the argument, also echoed in the result
    assert withheld["intent"]["tool_name"] == "get_current_time"  # the rest is all there
    assert submitted["payload"]["tool"] == "get_current_time"

    status, everything = await get(url, token=full)
    assert status == 200 and everything["withheld"] == []
    submitted = next(e for e in everything["events"] if e["type"] == "intent.submitted")
    assert submitted["payload"]["arguments"] == {"timezone": "Europe/Paris"}
    assert "Europe/Paris" in json.dumps(everything["receipt"]["result"])

    digest = "sha256:" + hashlib.sha256(b"x").hexdigest()
    with pytest.raises(CommandError) as refused:
        await commands.call(
            spine.nc, "identity", "issue_reader_token", {"name": "too-much", "token_hash": digest, "scope": "admin"}
        )
    assert refused.value.code == "invalid_scope"


async def test_sql_runs_reads_and_refuses_writes(spine: Spine, story: Story) -> None:
    out = await ledger(spine, "views_sql", {"sql": f"SELECT status FROM intents WHERE intent_id = '{story.plain}'"})
    assert out == {"columns": ["status"], "rows": [["succeeded"]], "truncated": False}
    for sql in (
        "DELETE FROM intents",
        "UPDATE intents SET status = 'x'",
        "CREATE TABLE t(x)",
        "PRAGMA query_only = OFF",
    ):
        with pytest.raises(CommandError) as refused:
            await ledger(spine, "views_sql", {"sql": sql})
        assert refused.value.code == "read_only", sql
    still = await ledger(spine, "views_sql", {"sql": "SELECT COUNT(*) FROM intents"})
    assert still["rows"][0][0] >= 3


async def test_rebuilding_twice_gives_identical_tables_equal_to_the_live_ones(spine: Spine, story: Story) -> None:
    # The session's nats-server carries every integration module's log, and a straggler from one
    # of them (an approval expiring) may land at any moment: compare digests at equal positions.
    for _ in range(5):
        live = await ledger(spine, "views_digest")
        first = await commands.call(spine.nc, "ledger", "views_rebuild", {}, timeout=120)
        second = await commands.call(spine.nc, "ledger", "views_rebuild", {}, timeout=120)
        if live["positions"] == first["positions"] == second["positions"]:
            break
    assert live["positions"] == first["positions"] == second["positions"]
    assert first["tables"] == second["tables"] == live["tables"]
    assert first["digest"] == second["digest"] == live["digest"]
    assert first["events"] == second["events"] > 0
    found = await ledger(spine, "views_intent", {"intent_id": story.approved})  # the swapped-in file serves reads
    assert found["intent"]["status"] == "succeeded"


async def test_lag_counts_events_and_seconds_behind_then_reaches_zero(
    spine: Spine, story: Story, tmp_path: Path
) -> None:
    streams = await caught_up(spine)
    assert {s["stream"] for s in streams} == set(STREAMS)
    assert metrics.VIEW_LAG_EVENTS.labels(subjects.INTENTS_STREAM)._value.get() == 0
    # A views file that has applied nothing yet is exactly the whole log behind.
    fresh = Views(tmp_path / "behind.sqlite3")
    await fresh.start(spine.nc, follow=False)
    behind = {lag.stream: lag for lag in await fresh.lag()}
    # Read with no await in between: the live ledger's poller (same process, same gauges) cannot
    # run before this line.
    gauge = metrics.VIEW_LAG_EVENTS.labels(subjects.INTENTS_STREAM)._value.get()
    intents = behind[subjects.INTENTS_STREAM]
    assert gauge == intents.events_behind == intents.head > 0
    assert intents.head <= (await spine.js.stream_info(subjects.INTENTS_STREAM)).state.last_seq
    assert behind[subjects.INTENTS_STREAM].seconds_behind > 0
    for _ in range(10):  # a straggler from another module may land between catching up and asking
        for stream in STREAMS:
            await fresh.catch_up(stream)
        after = {lag.stream: lag for lag in await fresh.lag()}
        if all(lag.events_behind == 0 and lag.seconds_behind == 0 for lag in after.values()):
            break
    assert all(lag.events_behind == 0 and lag.seconds_behind == 0 for lag in after.values()), after
    await fresh.stop()
