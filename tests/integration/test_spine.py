"""The critical path against a real nats-server, a real Redis and the real mcp-server-time:
the five services run in this process (so spans land in an in-memory exporter), nothing mocked."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
from inprocess import DEFAULT_POLICY, SPANS, Spine

from writ.sdk import WritAgent, fetch_receipt
from writ.synthetic import producer_of
from writ_common import commands, subjects
from writ_common import events as ev
from writ_common.bus import StaleAppend, append, direct_get_batch, read_history
from writ_common.envelope import make_envelope
from writ_common.receipts import verify_receipt
from writ_common.signing import generate_key

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

POLICY = DEFAULT_POLICY + (
    '\n@id("no-convert")\nforbid(principal, action == Action::"call_tool", resource)'
    ' when { resource.name == "convert_time" };\n'
)


@pytest_asyncio.fixture(scope="module", loop_scope="session", autouse=True)
async def spine_policy(spine: Spine) -> None:
    await commands.call(spine.nc, "policy", "load", {"cedar": POLICY})


async def ledger_public_key(spine: Spine) -> str:
    return str((await commands.call(spine.nc, "ledger", "public_key", {}))["public_key"])


async def test_allowed_intent_returns_the_tools_real_output_in_a_signed_receipt(spine: Spine) -> None:
    receipt = await spine.agent.call("get_current_time", {"timezone": "Europe/Paris"}, timeout=30)
    assert receipt.status == "succeeded", receipt.reason
    assert receipt.stage == "execute"
    assert receipt.result is not None
    assert receipt.result["structuredContent"]["timezone"] == "Europe/Paris"
    assert receipt.tool_digest and receipt.args_digest and receipt.policy_digest
    assert receipt.policy_ids == ["read-only-tools"]
    verify_receipt(receipt, await ledger_public_key(spine))


@pytest.mark.parametrize(
    ("tool", "arguments", "status", "stage", "code"),
    [
        (
            "convert_time",
            {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
            "denied",
            "authorize",
            "forbidden",
        ),
        ("get_current_time", {"timezone": 42}, "rejected", "plan", "invalid_arguments"),
        ("get_current_time", {}, "rejected", "plan", "invalid_arguments"),
        ("no_such_tool", {}, "rejected", "plan", "unknown_tool"),
    ],
)
async def test_refused_intents_each_end_in_one_receipt_with_stage_and_reason(
    spine: Spine, tool: str, arguments: dict[str, object], status: str, stage: str, code: str
) -> None:
    submission = await spine.agent.submit(tool, arguments)
    receipt = await spine.agent.receipt(submission.intent_id, timeout=30)
    assert (receipt.status, receipt.stage, receipt.code) == (status, stage, code)
    assert receipt.reason.startswith(code)
    await assert_one_receipt(spine, submission.intent_id)


async def test_bad_signature_is_rejected_at_authenticate(spine: Spine) -> None:
    impostor = WritAgent(spine.nc, spine.agent.agent_id, generate_key())
    submission = await impostor.submit("get_current_time", {"timezone": "UTC"})
    receipt = await spine.agent.receipt(submission.intent_id, timeout=30)
    assert (receipt.status, receipt.stage, receipt.code) == ("rejected", "authenticate", "bad_signature")
    assert spine.agent.agent_id in receipt.reason
    history = await read_history(spine.nc, spine.agent.agent_id, submission.intent_id)
    assert [e.type for e in history.events] == ["intent.submitted", "intent.rejected"]


async def test_unknown_agent_is_rejected(spine: Spine) -> None:
    stranger = WritAgent(spine.nc, "nobody-registered", generate_key())
    submission = await stranger.submit("get_current_time", {"timezone": "UTC"})
    receipt = await stranger.receipt(submission.intent_id, timeout=30)
    assert (receipt.status, receipt.code) == ("rejected", "unknown_agent")


async def test_same_idempotency_key_twice_executes_once_with_one_receipt(spine: Spine) -> None:
    key = f"once-{uuid.uuid4()}"
    first = await spine.agent.submit("get_current_time", {"timezone": "UTC"}, idempotency_key=key)
    second = await spine.agent.submit("get_current_time", {"timezone": "UTC"}, idempotency_key=key)
    assert first.intent_id == second.intent_id
    assert not first.duplicate and second.duplicate
    receipt = await spine.agent.receipt(first.intent_id, timeout=30)
    assert receipt.status == "succeeded"
    await asyncio.sleep(0.5)  # give a (wrong) second execution the chance to show up
    history = await read_history(spine.nc, spine.agent.agent_id, first.intent_id)
    types = [e.type for e in history.events]
    assert types.count("intent.submitted") == 1
    assert types.count("execution.started") == 1
    assert types.count("execution.succeeded") == 1
    await assert_one_receipt(spine, first.intent_id)


async def test_stale_append_is_refused_by_the_server_and_the_handler_recovers(spine: Spine) -> None:
    submission = await spine.agent.submit("get_current_time", {"timezone": "UTC"})
    await spine.agent.receipt(submission.intent_id, timeout=30)
    history = await read_history(spine.nc, spine.agent.agent_id, submission.intent_id)
    late = make_envelope(
        ev.IntentExpired(stage="execute", reason="test"),
        producer=producer_of(ev.IntentExpired(stage="execute", reason="test")),
        intent_id=submission.intent_id,
        agent_id=spine.agent.agent_id,
    )
    # The server itself refuses an append fenced on an old sequence.
    with pytest.raises(StaleAppend):
        await append(spine.js, late, expected_last_seq=history.events[0].seq)

    # A handler whose fold went stale folds again and finds its work done: one event, not two.
    # The intent here is hand-made (no "submitted"), so no service acts on it but the one we drive.
    intent_id = f"in-race{uuid.uuid4().hex[:12]}"

    def event(payload: ev.Payload):  # type: ignore[no-untyped-def]
        return make_envelope(payload, producer=producer_of(payload), intent_id=intent_id, agent_id=spine.agent.agent_id)

    first = await append(spine.js, event(ev.IntentAuthenticated(key_id="seed")), expected_last_seq=0)
    trigger = (await read_history(spine.nc, spine.agent.agent_id, intent_id)).events[0]
    assert trigger.seq == first.seq
    calls = 0

    async def racing_decide(view):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:  # another replica appends between our fold and our append
            last = (await read_history(spine.nc, spine.agent.agent_id, intent_id)).last_seq
            await append(
                spine.js,
                event(
                    ev.IntentPlanned(
                        server="s", tool="t", tool_digest="d", args_digest="a", annotations=ev.ToolAnnotations()
                    )
                ),
                expected_last_seq=last,
            )
        return (
            []
            if view.planned
            else [
                ev.IntentPlanned(
                    server="s", tool="mine", tool_digest="d", args_digest="a", annotations=ev.ToolAnnotations()
                )
            ]
        )

    appended = await spine.services[0].run_stage(trigger, "plan", racing_decide)
    assert calls == 2 and appended == []
    after = await read_history(spine.nc, spine.agent.agent_id, intent_id)
    planned = [e for e in after.events if e.type == "intent.planned"]
    assert len(planned) == 1 and isinstance(planned[0].payload, ev.IntentPlanned)
    assert planned[0].payload.tool == "t"


async def test_spans_of_all_five_stages_share_one_trace(spine: Spine) -> None:
    SPANS.clear()
    receipt = await spine.agent.call("get_current_time", {"timezone": "Asia/Tokyo"}, timeout=30)
    assert receipt.status == "succeeded"
    stages = {"agent", "identity", "registry", "policy", "executor", "ledger"}
    for _ in range(100):  # the ledger's span ends just after the receipt is stored
        spans = [
            s for s in SPANS.get_finished_spans() if (s.attributes or {}).get("writ.intent_id") == receipt.intent_id
        ]
        by_service = {str((s.attributes or {}).get("writ.service", "agent")): s for s in spans}
        if stages <= set(by_service):
            break
        await asyncio.sleep(0.05)
    assert stages <= set(by_service)
    trace_ids = {s.context.trace_id for s in spans if s.context}
    assert len(trace_ids) == 1


@pytest.mark.parametrize("event", ["submitted", "authenticated", "planned", "authorized"])
async def test_malformed_message_is_dead_lettered_and_the_consumer_keeps_serving(spine: Spine, event: str) -> None:
    bogus_intent = f"in-bogus{uuid.uuid4().hex[:10]}"
    subject = f"writ.intent.{spine.agent.agent_id}.{bogus_intent}.{event}"
    await spine.js.publish(subject, b'{"this is": "not an event"')

    async def dead_letters() -> list[str]:
        # Its consumer and the ledger both meet it; the stream keeps one copy, whoever was first.
        msgs = await direct_get_batch(spine.nc, subjects.DLQ_STREAM, "writ.dlq.>")
        return [
            (m.headers or {}).get("Writ-Dead-Letter-Reason", "")
            for m in msgs
            if (m.headers or {}).get("Writ-Original-Subject") == subject
        ]

    for _ in range(100):
        if reasons := await dead_letters():
            break
        await asyncio.sleep(0.05)
    assert len(reasons) == 1 and reasons[0]
    # The consumer is not stuck: the next intent goes through.
    receipt = await spine.agent.call("get_current_time", {"timezone": "UTC"}, timeout=30)
    assert receipt.status == "succeeded"


async def test_receipts_form_a_verifiable_chain(spine: Spine) -> None:
    public_key = await ledger_public_key(spine)
    msgs = await direct_get_batch(spine.nc, subjects.LEDGER_STREAM, subjects.RECEIPTS_FILTER)
    assert len(msgs) >= 2
    previous = None
    from writ_common.envelope import decode

    for msg in msgs:
        receipt = decode(msg.data).payload
        assert isinstance(receipt, ev.Receipt)
        verify_receipt(receipt, public_key, prev_hash=previous.receipt_hash if previous else None)
        if previous is not None:
            assert receipt.position == previous.position + 1
        previous = receipt


async def assert_one_receipt(spine: Spine, intent_id: str) -> None:
    msgs = await direct_get_batch(spine.nc, subjects.LEDGER_STREAM, subjects.any_receipt_subject(intent_id))
    assert len(msgs) == 1
    assert await fetch_receipt(spine.nc, intent_id) is not None


async def test_a_tool_server_over_streamable_http(spine: Spine) -> None:
    import subprocess

    from writ.runtime import free_port

    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).parents[1] / "servers" / "echo_http.py"),
        str(port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        for _ in range(100):
            try:
                body = {"name": "echo", "transport": "http", "url": url, "idempotency_header": "Idempotency-Key"}
                await commands.call(spine.nc, "registry", "add_server", body)
                break
            except commands.CommandError as exc:
                assert exc.code == "discovery_failed"
                await asyncio.sleep(0.1)
        receipt = await spine.agent.call("echo/echo", {"text": "über-ok"}, timeout=30)
        assert receipt.status == "succeeded", receipt.reason
        assert receipt.result is not None
        assert "über-ok" in str(receipt.result["content"])
        # The server said it takes the idempotency key as a header: the intent id arrives there.
        keyed = await spine.agent.call("echo/idempotency_header", {}, timeout=30)
        assert keyed.status == "succeeded", keyed.reason
        assert keyed.result is not None and keyed.result["content"][0]["text"] == keyed.intent_id
    finally:
        server.terminate()
        await server.wait()
