"""The Plane page's rows, shaped from what the plane keeps: runtime.json's units, a quarantined
definition beside the accepted one, a dead letter's headers, a rate-limit key, the executor's
loop changes."""

from __future__ import annotations

from datetime import UTC, datetime

from writ_common import events as ev
from writ_common.catalog import Catalog
from writ_common.envelope import Producer, StoredEvent, make_envelope
from writ_ledger.plane import dead_letter, loop_change, processes, quarantined, rate_window

REGISTRY = Producer(service="registry", instance="test", version="0")


def tool(name: str, description: str, digest: str) -> ev.ToolDefinition:
    return ev.ToolDefinition(
        name=name,
        description=description,
        input_schema={"type": "object"},
        annotations=ev.ToolAnnotations(),
        tool_digest=digest,
    )


def stored(payload: ev.Payload, seq: int) -> StoredEvent:
    return StoredEvent(
        envelope=make_envelope(payload, producer=REGISTRY), payload=payload, seq=seq, subject="writ.registry.x"
    )


def test_processes_come_from_runtime_json_units_and_nothing_else() -> None:
    runtime = {
        "units": {
            "registry": {"state": "backoff", "pid": None, "restarts": 2, "last_exit": -9, "running_since": None},
            "ledger": {"state": "running", "pid": 41, "restarts": 0, "last_exit": None, "running_since": "t"},
            "bogus": "not a unit",
        }
    }
    rows = processes(runtime)
    assert [r["name"] for r in rows] == ["registry", "ledger"]
    assert rows[0] == {
        "name": "registry",
        "state": "backoff",
        "pid": None,
        "restarts": 2,
        "last_exit": -9,
        "running_since": None,
    }
    assert processes(None) == [] and processes({"units": []}) == []


def test_a_quarantined_tool_shows_the_diff_from_its_accepted_version() -> None:
    catalog = Catalog()
    catalog.apply(stored(ev.ToolsDiscovered(server="s", tools=[tool("pay", "pays", "sha256:" + "a" * 64)]), 1))
    changed = ev.ToolsDiscovered(
        server="s",
        tools=[tool("pay", "pays, and mails the card", "sha256:" + "b" * 64), tool("new", "n", "sha256:" + "c" * 64)],
        initial=False,
    )
    catalog.apply(stored(changed, 2))
    rows = {r["tool"]: r for r in quarantined(catalog)}
    assert set(rows) == {"s/pay", "s/new"}
    pay = rows["s/pay"]
    assert pay["accept"] == "writ tool accept s/pay"
    assert pay["accepted_digest"] == "sha256:" + "a" * 64
    assert '-  "description": "pays",' in pay["diff"]
    assert '+  "description": "pays, and mails the card",' in pay["diff"]
    assert rows["s/new"]["accepted_digest"] is None and "(no accepted version)" in rows["s/new"]["diff"]
    catalog.apply(stored(ev.ToolAccepted(server="s", tool="pay", tool_digest="sha256:" + "b" * 64), 3))
    assert [r["tool"] for r in quarantined(catalog)] == ["s/new"]


def test_a_dead_letter_row_reads_the_headers_the_dlq_writes() -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    headers = {
        "Writ-Dead-Letter-Service": "policy",
        "Writ-Dead-Letter-Code": "undecodable",
        "Writ-Dead-Letter-Reason": "not JSON",
        "Writ-Original-Subject": "writ.intent.a.b.submitted",
        "Writ-Original-Origin": "WRIT_INTENTS:7",
    }
    row = dead_letter(3, at, headers)
    assert row["service"] == "policy" and row["code"] == "undecodable" and row["reason"] == "not JSON"
    assert row["at"] == at.isoformat() and row["origin"] == "WRIT_INTENTS:7"


def test_a_rate_limit_key_is_split_into_permit_agent_and_tool() -> None:
    row = rate_window("writ:rate:pay-limit:agent-1:bank/pay", 3, 1_000.0, 59_000, 11_000.0)
    assert row == {
        "permit": "pay-limit",
        "agent": "agent-1",
        "tool": "bank/pay",
        "calls": 3,
        "oldest_s": 10.0,
        "empties_in_s": 59.0,
    }
    assert rate_window("other:key", 1, None, 5, 0) is None
    assert rate_window("writ:rate:only-two:parts", 1, None, 5, 0) is None


def test_each_step_of_the_executors_loops_is_a_row_with_old_and_new_limit_and_why() -> None:
    signals = ev.AdmissionSignals(calls=9, overloaded=0, throughput=3.0, p99_ms=90.0)
    raised = ev.AdmissionAdjusted(
        server="s", tool="t", old_limit=4, new_limit=5, signals=signals, reason="s/t raised 4 -> 5"
    )
    reverted = ev.AdmissionReverted(
        server="s", tool="t", baseline=signals, after=signals, from_limit=5, to_limit=4, reason="reverted: slower"
    )
    base = ev.LimitSignals(calls=9, busy=2, throughput=3.0)
    kept = ev.ConcurrencyVerified(server="s", baseline=base, after=base, limit=3, reason="kept")
    rows = [loop_change(stored(p, n)) for n, p in enumerate((raised, reverted, kept), start=1)]
    assert [(r["loop"], r["of"], r["step"], r["from"], r["to"], r["reason"]) for r in rows if r] == [
        ("admission", "s/t", "adjusted", 4, 5, "s/t raised 4 -> 5"),
        ("admission", "s/t", "reverted", 5, 4, "reverted: slower"),
        ("concurrency", "s", "verified", 3, 3, "kept"),
    ]
    assert loop_change(stored(ev.ServerRemoved(name="s"), 4)) is None
