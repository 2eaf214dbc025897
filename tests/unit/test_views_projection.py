"""The views' projection without a broker: every table fills from the log, replay is a no-op, the
result does not depend on how streams interleave, and the read side is read-only and paginates."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from writ.synthetic import Message, control_log, intent_log
from writ_common import events as ev
from writ_common import subjects
from writ_common.envelope import Producer, StoredEvent, decode, encode, make_envelope
from writ_ledger.views.queries import IntentFilter, QueryError, get_intent, list_intents, open_reader, run_sql, stats
from writ_ledger.views.store import ViewStore

pytestmark = pytest.mark.unit

STREAMS = (subjects.INTENTS_STREAM, subjects.IDENTITY_STREAM, subjects.REGISTRY_STREAM, subjects.LEDGER_STREAM)


def sequenced(messages: list[Message]) -> dict[str, list[tuple[int, StoredEvent | None]]]:
    """Give each message the sequence it would have in its stream."""
    out: dict[str, list[tuple[int, StoredEvent | None]]] = defaultdict(list)
    for m in messages:
        seq = len(out[m.stream]) + 1
        out[m.stream].append((seq, decode(encode(m.envelope), seq=seq, subject=m.subject)))
    return out


@pytest.fixture(scope="module")
def log() -> dict[str, list[tuple[int, StoredEvent | None]]]:
    return sequenced([*control_log(), *intent_log(400, seed=3)])


def build(
    path: Path, log: dict[str, list[tuple[int, StoredEvent | None]]], order: tuple[str, ...] = STREAMS
) -> ViewStore:
    store = ViewStore(path)
    for stream in order:
        store.apply(stream, log[stream])
    return store


def count(store: ViewStore, table: str) -> int:
    return int(store.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_every_table_fills_from_the_log(tmp_path: Path, log: dict[str, list[tuple[int, StoredEvent | None]]]) -> None:
    store = build(tmp_path / "v.sqlite3", log)
    assert count(store, "intents") == 400
    assert count(store, "intent_events") == len(log[subjects.INTENTS_STREAM])
    assert count(store, "receipts") == 400
    assert count(store, "agents") == 12
    assert count(store, "tools") == 5 and count(store, "servers") == 4
    for table in ("decisions", "approvals", "approval_decisions", "executions", "rollups"):
        assert count(store, table) > 0, table
    # Every ended intent has its end-to-end duration, and the rollups count every call once.
    assert (
        store.db.execute("SELECT COUNT(*) FROM intents WHERE ended_at IS NULL OR total_ms IS NULL").fetchone()[0] == 0
    )
    assert store.db.execute("SELECT SUM(calls) FROM rollups").fetchone()[0] == 400
    ends = store.db.execute("SELECT SUM(succeeded + denials + failures + rejections + expirations) FROM rollups")
    assert ends.fetchone()[0] == 400
    assert store.position(subjects.INTENTS_STREAM) == len(log[subjects.INTENTS_STREAM])


def test_an_approved_call_has_its_decision_approval_and_attempts(
    tmp_path: Path, log: dict[str, list[tuple[int, StoredEvent | None]]]
) -> None:
    store = build(tmp_path / "v.sqlite3", log)
    intent_id = store.db.execute("SELECT intent_id FROM approvals WHERE status = 'granted' LIMIT 1").fetchone()[0]
    full = get_intent(open_reader(store.path), intent_id)
    assert full is not None
    intent = full["intent"]
    assert intent["approval_ms"] >= 2000  # the synthetic approvers take 2 to 60 s
    assert intent["status"] in ("succeeded", "failed", "outcome_unknown")
    assert [d["kind"] for d in full["decisions"]] == ["approval_requested", "authorized"]
    assert full["decisions"][-1]["policy_ids"] == ["destructive-needs-approval"]
    assert full["approval"]["granted_by"] == ["carol"]
    assert full["executions"][-1]["outcome"] == intent["status"]
    assert full["receipt"]["intent_id"] == intent_id
    assert full["events"][0]["type"] == "intent.submitted"


def test_replaying_any_prefix_again_changes_nothing(
    tmp_path: Path, log: dict[str, list[tuple[int, StoredEvent | None]]]
) -> None:
    store = build(tmp_path / "v.sqlite3", log)
    before = store.digest()
    for stream in STREAMS:
        assert store.apply(stream, log[stream][: len(log[stream]) // 2]) == 0
        assert store.apply(stream, log[stream]) == 0
    assert store.digest() == before


def test_stream_interleaving_does_not_change_the_tables(
    tmp_path: Path, log: dict[str, list[tuple[int, StoredEvent | None]]]
) -> None:
    one = build(tmp_path / "a.sqlite3", log)
    other = build(tmp_path / "b.sqlite3", log, order=tuple(reversed(STREAMS)))
    assert one.digest() == other.digest()


def test_an_undecodable_message_only_advances_the_position(tmp_path: Path) -> None:
    store = ViewStore(tmp_path / "v.sqlite3")
    assert store.apply(subjects.INTENTS_STREAM, [(1, None), (2, None)]) == 2
    assert store.position(subjects.INTENTS_STREAM) == 2
    assert count(store, "intents") == 0


def test_an_event_naming_another_agents_intent_is_ignored(
    tmp_path: Path, log: dict[str, list[tuple[int, StoredEvent | None]]]
) -> None:
    store = build(tmp_path / "v.sqlite3", log)
    victim = store.db.execute(
        "SELECT intent_id, agent_id, status FROM intents WHERE status = 'denied' LIMIT 1"
    ).fetchone()
    forged = make_envelope(
        ev.ExecutionSucceeded(attempt=1, result={}, result_digest="x", duration_ms=1.0),
        producer=Producer(service="test", instance="t", version="0"),
        intent_id=victim[0],
        agent_id="mallory",
    )
    seq = store.position(subjects.INTENTS_STREAM) + 1
    store.apply(subjects.INTENTS_STREAM, [(seq, decode(encode(forged), seq=seq))])
    assert store.db.execute("SELECT status FROM intents WHERE intent_id = ?", (victim[0],)).fetchone()[0] == "denied"


def test_cursor_pages_cover_every_match_once_newest_first(
    tmp_path: Path, log: dict[str, list[tuple[int, StoredEvent | None]]]
) -> None:
    store = build(tmp_path / "v.sqlite3", log)
    db = open_reader(store.path)
    expected = [
        r[0]
        for r in db.execute("SELECT intent_id FROM intents WHERE agent_id = 'agent-03' ORDER BY submitted_seq DESC")
    ]
    seen: list[str] = []
    cursor = None
    while True:
        page = list_intents(db, IntentFilter(agent="agent-03"), limit=7, cursor=cursor)
        seen += [r["intent_id"] for r in page["intents"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected and len(expected) > 7
    denied = list_intents(db, IntentFilter(status="denied", reason="approval_denied"), limit=500)["intents"]
    assert denied and all(r["code"] == "approval_denied" for r in denied)
    window = list_intents(db, IntentFilter(since="2026-01-05T08:01:00Z", until="2026-01-05T08:02:00+00:00"), limit=500)
    assert len(window["intents"]) == 120  # one intent every 0.5 s
    with pytest.raises(QueryError, match="invalid_cursor"):
        list_intents(db, IntentFilter(), cursor="nonsense")


def test_stats_count_outcomes_and_give_exact_percentiles(
    tmp_path: Path, log: dict[str, list[tuple[int, StoredEvent | None]]]
) -> None:
    store = build(tmp_path / "v.sqlite3", log)
    db = open_reader(store.path)
    rows = {r["key"]: r for r in stats(db, "agent")}
    assert sum(r["calls"] for r in rows.values()) == 400
    row = rows["agent-03"]
    durations = sorted(x[0] for x in db.execute("SELECT total_ms FROM intents WHERE agent_id = 'agent-03'"))
    assert row["p50_ms"] == durations[(len(durations) + 1) // 2 - 1]
    assert row["p99_ms"] <= durations[-1] and row["ended"] == len(durations)
    assert {r["key"] for r in stats(db, "hour")} == {"2026-01-05T08"}


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("DELETE FROM intents", "read_only"),
        ("UPDATE intents SET status = 'succeeded'", "read_only"),
        ("INSERT INTO agents(agent_id) VALUES ('x')", "read_only"),
        ("DROP TABLE intents", "read_only"),
        ("ATTACH DATABASE '/tmp/evil.sqlite3' AS evil", "read_only"),
        ("PRAGMA journal_mode = DELETE", "read_only"),
        ("SELECT * FROM reader_tokens", "forbidden"),
        ("SELECT 1; DELETE FROM intents", "invalid_sql"),
        ("SELEC 1", "invalid_sql"),
    ],
)
def test_sql_refuses_anything_but_reads(
    tmp_path: Path, log: dict[str, list[tuple[int, StoredEvent | None]]], sql: str, code: str
) -> None:
    store = build(tmp_path / "v.sqlite3", log)
    before = store.digest()
    with pytest.raises(QueryError) as refused:
        run_sql(store.path, sql)
    assert refused.value.code == code
    assert store.digest() == before
    assert not Path("/tmp/evil.sqlite3").exists() or code != "read_only"


def test_a_refused_statement_says_why_in_a_sentence_without_its_code(
    tmp_path: Path, log: dict[str, list[tuple[int, StoredEvent | None]]]
) -> None:
    store = build(tmp_path / "v.sqlite3", log)
    for sql, code, message in (
        ("SELECT * FROM reader_tokens", "forbidden", "table reader_tokens is not readable here"),
        ("DELETE FROM intents", "read_only", "the views are read-only: only SELECT statements run here"),
    ):
        with pytest.raises(QueryError) as refused:
            run_sql(store.path, sql)
        assert (refused.value.code, refused.value.message) == (code, message)


def test_sql_reads_and_caps_rows(tmp_path: Path, log: dict[str, list[tuple[int, StoredEvent | None]]]) -> None:
    store = build(tmp_path / "v.sqlite3", log)
    out = run_sql(store.path, "SELECT status, COUNT(*) AS n FROM intents GROUP BY status ORDER BY status")
    assert out["columns"] == ["status", "n"] and sum(r[1] for r in out["rows"]) == 400
    capped = run_sql(store.path, "SELECT seq FROM intent_events", max_rows=10)
    assert len(capped["rows"]) == 10 and capped["truncated"]
    with pytest.raises(QueryError, match="query_timeout"):
        run_sql(
            store.path,
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c",
            timeout=0.2,
        )


def test_a_views_file_has_one_writer_at_a_time(tmp_path: Path) -> None:
    from writ_ledger.views.runner import Views, ViewsInUse

    path = tmp_path / "views.sqlite3"
    first = Views(path)
    with pytest.raises(ViewsInUse) as refused:
        Views(path)  # a second ledger process pointed at the same file
    assert f"pid {os.getpid()}" in str(refused.value) and "WRIT_VIEWS_FILE" in str(refused.value)
    first.store.close()
    first.release()
    Views(path).release()  # free again once the first let go


def test_a_summary_reader_gets_no_arguments_or_results_but_everything_else() -> None:
    from writ_ledger.views.queries import WITHHELD, WITHHELD_FIELDS, withhold_content

    submitted = {"type": "intent.submitted", "payload": {"tool": "crm/lookup", "arguments": {"ssn": "123"}}}
    detail: dict[str, Any] = {
        "intent": {"intent_id": "in-a", "tool_name": "lookup"},
        "events": [
            {"type": "intent.submitted", "payload": {"tool": "crm/lookup", "arguments": {"ssn": "123"}}},
            {
                "type": "execution.succeeded",
                "payload": {"attempt": 1, "result": {"content": "x"}, "result_digest": "d"},
            },
            {"type": "execution.failed", "payload": {"attempt": 2, "result": None, "reason": "boom"}},
        ],
        "decisions": [{"kind": "authorized"}],
        "approval": None,
        "executions": [{"attempt": 1, "outcome": "succeeded"}],
        "receipt": {"status": "succeeded", "result": {"content": "x"}, "result_digest": "d"},
    }
    out = withhold_content(detail)
    assert out["events"][0]["payload"] == {"tool": "crm/lookup", "arguments": WITHHELD}
    assert out["events"][1]["payload"] == {"attempt": 1, "result": WITHHELD, "result_digest": "d"}
    assert out["events"][2]["payload"]["result"] is None  # nothing there, nothing to withhold
    assert out["receipt"] == {"status": "succeeded", "result": WITHHELD, "result_digest": "d"}
    assert out["withheld"] == list(WITHHELD_FIELDS) and {"arguments", "result"} <= set(WITHHELD_FIELDS)
    assert (out["intent"], out["decisions"], out["executions"]) == (
        detail["intent"], detail["decisions"], detail["executions"]
    )  # fmt: skip
    assert submitted["payload"] == {"tool": "crm/lookup", "arguments": {"ssn": "123"}}  # the input is left alone


def test_shadow_decisions_project_beside_the_intent_and_change_nothing_in_it(tmp_path: Path) -> None:
    from writ.sdk import new_intent
    from writ_ledger.views.queries import shadow

    producer = Producer(service="policy", instance="t", version="0")
    intent = new_intent("bot", "srv/write", {"n": 1})
    planned = ev.IntentPlanned(
        server="srv", tool="write", tool_digest="t", args_digest="a", annotations=ev.ToolAnnotations()
    )
    record = ev.PolicyShadowDecided(
        shadow_digest="sha256:s", shadow_kind="deny", shadow_policy_ids=["no-write"], shadow_code="forbidden",
        enforced_digest="sha256:e", enforced_kind="allow", enforced_policy_ids=["all"], agrees=False,
    )  # fmt: skip
    allowed = ev.IntentAuthorized(policy_digest="sha256:e", policy_ids=["all"])
    events = []
    for seq, payload in enumerate((intent, planned, record, allowed), 1):
        env = make_envelope(payload, producer=producer, intent_id="i1", agent_id="bot")
        subject = subjects.intent_subject("bot", "i1", ev.EVENT_TYPE[type(payload)])
        events.append((seq, decode(encode(env), seq=seq, subject=subject)))
    store = ViewStore(tmp_path / "v.sqlite3")
    store.apply(subjects.INTENTS_STREAM, events)
    assert store.db.execute("SELECT status FROM intents").fetchone()[0] == "authorized"
    out = shadow(open_reader(tmp_path / "v.sqlite3"))
    (bundle,) = out["bundles"]
    assert (bundle["decisions"], bundle["agreed"], bundle["disagreed"]) == (1, 0, 1)
    assert bundle["changes"] == [{"from": "allow", "to": "deny", "count": 1}]
    (row,) = out["disagreements"]
    assert (row["intent_id"], row["tool"], row["shadow_policy_ids"]) == ("i1", "srv/write", ["no-write"])
    assert shadow(open_reader(tmp_path / "v.sqlite3"), digest="sha256:other") == {"bundles": [], "disagreements": []}


def test_every_intent_event_type_has_exactly_one_place_in_the_projection() -> None:
    """A new intent event type must be placed: a step, an ending, or handled apart (the submission,
    a reconciliation, and the advisory events: the timeline only, or the shadow table)."""
    from writ_common import topology
    from writ_common.envelope import EVENT_TYPE
    from writ_ledger.views.project import STEPS

    apart = {"intent.submitted", "execution.reconciled", *ev.ADVISORY_TYPES}
    stepped = {EVENT_TYPE[cls] for cls in STEPS}
    for route in topology.INTENT_ROUTES:
        places = [route.type in stepped, route.type in ev.TERMINAL_TYPES, route.type in apart]
        assert places.count(True) == 1, (route.type, places)
    assert stepped <= {route.type for route in topology.INTENT_ROUTES}


def test_an_agent_suspended_at_the_bus_shows_so_until_reinstated(tmp_path: Path) -> None:
    producer = Producer(service="identity", instance="t", version="0")
    suspended = ev.AgentSuspended(agent_id="bot", suspended_at="2026-01-02T03:04:05Z", reason="over its budget")
    payloads: list[tuple[str, ev.Payload]] = [
        (subjects.agent_subject("bot"), ev.AgentRegistered(agent_id="bot", public_key="k" * 43 + "=", owner="o")),
        (subjects.agent_event_subject("bot", "suspended"), suspended),
        (
            subjects.agent_event_subject("bot", "reinstated"),
            ev.AgentReinstated(
                agent_id="bot", reinstated_at="2026-01-02T03:05:00Z", suspended_at=suspended.suspended_at
            ),
        ),
    ]
    events = [
        (seq, decode(encode(make_envelope(p, producer=producer, agent_id="bot")), seq=seq, subject=subject))
        for seq, (subject, p) in enumerate(payloads, 1)
    ]
    store = ViewStore(tmp_path / "v.sqlite3")
    row = "SELECT status, suspended_at, suspended_reason FROM agents WHERE agent_id = 'bot'"
    store.apply(subjects.IDENTITY_STREAM, events[:2])
    assert store.db.execute(row).fetchone() == ("suspended", "2026-01-02T03:04:05Z", "over its budget")
    store.apply(subjects.IDENTITY_STREAM, events[2:])
    assert store.db.execute(row).fetchone() == ("active", None, None)


def test_the_views_tell_the_ledger_no_receipt_exists_only_when_in_step_with_the_chain(
    tmp_path: Path, log: dict[str, list[tuple[int, StoredEvent | None]]]
) -> None:
    """The receipt writer skips looking in the stream for an intent's receipt only where the views
    applied the ledger stream exactly up to the head it fences on and hold none."""
    from writ_ledger.views.runner import Views

    views = Views(tmp_path / "views.sqlite3")
    try:
        receipts = log[subjects.LEDGER_STREAM]
        views.store.apply(subjects.LEDGER_STREAM, receipts[:-1])
        head = len(receipts) - 1
        last = receipts[-1][1]
        assert last is not None and isinstance(last.payload, ev.Receipt)
        first = receipts[0][1]
        assert first is not None and isinstance(first.payload, ev.Receipt)
        assert views.no_receipt_until(last.payload.intent_id, head)
        assert not views.no_receipt_until(first.payload.intent_id, head)  # it has one
        assert not views.no_receipt_until(last.payload.intent_id, head + 1)  # behind the chain
        assert not views.no_receipt_until(last.payload.intent_id, head - 1)  # ahead of the head
        views.store.apply(subjects.LEDGER_STREAM, receipts[-1:])
        assert not views.no_receipt_until(last.payload.intent_id, head + 1)
    finally:
        views.store.close()
        views.release()


def committed_positions(path: Path) -> dict[str, int]:
    with contextlib.closing(open_reader(path)) as db:
        return {s: int(q) for s, q in db.execute("SELECT stream, seq FROM tracking")}


def test_deferred_batches_are_seen_by_readers_only_once_committed(
    tmp_path: Path, log: dict[str, list[tuple[int, StoredEvent | None]]]
) -> None:
    """The live views keep batches in one open transaction: another connection sees none of them
    until the commit, then all of them, rows and positions together."""
    path = tmp_path / "views.sqlite3"
    store = ViewStore(path, deferred=True)
    try:
        events = log[subjects.INTENTS_STREAM]
        store.apply(subjects.INTENTS_STREAM, events[:40])
        store.apply(subjects.INTENTS_STREAM, events[40:90])
        assert store.uncommitted
        assert store.position(subjects.INTENTS_STREAM) == 90  # the writer sees its own batches
        assert committed_positions(path).get(subjects.INTENTS_STREAM, 0) == 0
        store.commit()
        assert not store.uncommitted
        assert committed_positions(path)[subjects.INTENTS_STREAM] == 90
        with contextlib.closing(open_reader(path)) as db:
            assert db.execute("SELECT COUNT(*) FROM intents").fetchone()[0] == count(store, "intents") > 0
    finally:
        store.close()


def test_a_failing_batch_takes_back_only_itself(
    tmp_path: Path, log: dict[str, list[tuple[int, StoredEvent | None]]]
) -> None:
    """A batch that fails midway is rolled back to where it began: the batches applied before it
    in the same open transaction stay, with their position, and commit."""
    events = log[subjects.INTENTS_STREAM]
    seen: list[int] = []

    def on_applied(_stream: str, seq: int, _event: StoredEvent | None) -> None:
        if seq == 65:
            raise RuntimeError("the cache refused it")
        seen.append(seq)

    store = ViewStore(tmp_path / "views.sqlite3", on_applied, deferred=True)
    try:
        store.apply(subjects.INTENTS_STREAM, events[:50])
        with pytest.raises(RuntimeError):
            store.apply(subjects.INTENTS_STREAM, events[50:80])
        assert store.position(subjects.INTENTS_STREAM) == 50
        store.commit()
        assert committed_positions(tmp_path / "views.sqlite3")[subjects.INTENTS_STREAM] == 50
        reference = build(
            tmp_path / "reference.sqlite3", {subjects.INTENTS_STREAM: events[:50]}, (subjects.INTENTS_STREAM,)
        )
        try:
            assert store.table_digests()["intents"] == reference.table_digests()["intents"]
        finally:
            reference.close()
    finally:
        store.close()


async def test_whoever_reads_through_the_views_sees_what_was_applied(
    tmp_path: Path, log: dict[str, list[tuple[int, StoredEvent | None]]]
) -> None:
    """Read-your-writes: an event the live views applied is in the answer of the next read through
    them, with no wait for the commit timer; the timer commits it for other readers of the file."""
    from writ_ledger.views import runner
    from writ_ledger.views.runner import Views

    views = Views(tmp_path / "views.sqlite3")
    try:
        events = [e for _, e in log[subjects.INTENTS_STREAM][:30] if e is not None]
        await views.apply_live_batch(subjects.INTENTS_STREAM, events[:29])
        await views.apply_live(subjects.INTENTS_STREAM, events[29])
        last = events[29].envelope.intent_id
        assert views.store.uncommitted
        found = await views.read(get_intent, last)
        assert found is not None and found["intent"]["intent_id"] == last
        await views.apply_live(subjects.INTENTS_STREAM, log[subjects.INTENTS_STREAM][30][1])  # type: ignore[arg-type]
        assert views.store.uncommitted
        await asyncio.sleep(runner.COMMIT_AFTER_SECONDS * 4)
        assert not views.store.uncommitted
        assert committed_positions(tmp_path / "views.sqlite3")[subjects.INTENTS_STREAM] == 31
    finally:
        await views.stop()
