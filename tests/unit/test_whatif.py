"""A candidate bundle against the enforced one, as pure functions: the replay's scope, the decision
diff, the shadow record, and the fold leaving shadow decisions out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from writ.sdk import new_intent
from writ_common import events as ev
from writ_common.envelope import Producer, StoredEvent, decode, encode, make_envelope
from writ_common.fold import IntentView, fold_intent
from writ_common.ids import derive_intent_id
from writ_policy.domain import compile_bundle, decide
from writ_policy.whatif import (
    Replayed,
    Scope,
    Verdict,
    counts_only,
    decision_diff,
    parse_since,
    replay,
    shadow_decided,
    verdict_of,
)

pytestmark = pytest.mark.unit

PRODUCER = Producer(service="test", instance="t", version="0")
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)

PERMIT_ALL = '@id("all")\npermit(principal, action, resource);\n'
OPS_ONLY = '@id("ops")\npermit(principal in Team::"ops", action, resource);\n'
FORBID_WRITE = PERMIT_ALL + '@id("no-write")\nforbid(principal, action, resource) when { resource.name == "write" };\n'
ASK_WRITE = (
    '@id("read")\npermit(principal, action, resource) when { resource.name != "write" };\n'
    '@id("ask")\n@approval("ops")\npermit(principal, action, resource) when { resource.name == "write" };\n'
)


def history(
    agent: str, tool: str, *, teams: tuple[str, ...] = (), at: datetime = NOW, planned: bool = True
) -> list[StoredEvent]:
    intent = new_intent(agent, tool, {"n": 1})
    intent_id = derive_intent_id(agent, intent.idempotency_key)
    payloads: list[ev.Payload] = [intent, ev.IntentAuthenticated(key_id="k", owner="alice", teams=list(teams))]
    if planned:
        payloads.append(
            ev.IntentPlanned(
                server="srv", tool=tool, tool_digest="t", args_digest="a", annotations=ev.ToolAnnotations()
            )
        )
    events = []
    for seq, payload in enumerate(payloads, 1):
        env = make_envelope(payload, producer=PRODUCER, intent_id=intent_id, agent_id=agent)
        env = msgspec.structs.replace(env, occurred_at=at.isoformat())
        events.append(decode(encode(env), seq=seq))
    return events


def view(agent: str, tool: str, **kw: object) -> IntentView:
    return fold_intent(history(agent, tool, **kw))  # type: ignore[arg-type]


def row(agent: str, tool: str, before: Verdict, after: Verdict, intent_id: str = "i") -> Replayed:
    return Replayed(intent_id=intent_id, agent_id=agent, tool=tool, current=before, candidate=after)


class TestReplay:
    def test_each_planned_intent_is_decided_by_both_bundles_with_its_recorded_teams(self) -> None:
        views = [view("bot", "read", teams=("ops",)), view("eve", "read"), view("bot", "read", planned=False)]
        rows = replay(views, compile_bundle(PERMIT_ALL), compile_bundle(OPS_ONLY), Scope(), now=NOW)
        assert [(r.agent_id, r.current.kind, r.candidate.kind) for r in rows] == [
            ("bot", "allow", "allow"),
            ("eve", "allow", "deny"),
        ]
        assert rows[1].candidate.deciding == "(no_permit)"

    def test_the_scope_keeps_the_agent_the_tool_and_the_time_asked_for(self) -> None:
        views = [
            view("bot", "read"),
            view("bot", "write"),
            view("eve", "write"),
            view("bot", "write", at=NOW - timedelta(days=8)),
        ]
        bundle = compile_bundle(PERMIT_ALL)
        scope = Scope(since=parse_since("7d", NOW), agent="bot", tool="srv/write")
        rows = replay(views, bundle, bundle, scope, now=NOW)
        assert [(r.agent_id, r.tool) for r in rows] == [("bot", "srv/write")]
        assert len(replay(views, bundle, bundle, Scope(tool="write"), now=NOW)) == 3

    def test_no_enforced_bundle_reads_as_a_denial(self) -> None:
        rows = replay([view("bot", "read")], None, compile_bundle(PERMIT_ALL), Scope(), now=NOW)
        assert (rows[0].current, rows[0].candidate.kind) == (Verdict("deny", (), "no_policy"), "allow")


class TestDiff:
    def test_transitions_are_counted_by_agent_tool_and_deciding_policy(self) -> None:
        allow, forbid, ask = (
            Verdict("allow", ("all",)),
            Verdict("deny", ("no-write",), "forbidden"),
            Verdict("approval", ("ask",)),
        )
        rows = [
            row("bot", "srv/write", allow, forbid, "i1"),
            row("eve", "srv/write", allow, forbid, "i2"),
            row("bot", "srv/write", allow, forbid, "i3"),
            row("bot", "srv/write", allow, forbid, "i4"),
            row("bot", "srv/send", allow, ask, "i5"),
            row("bot", "srv/read", allow, allow, "i6"),
            row("eve", "srv/read", Verdict("deny", (), "no_permit"), allow, "i7"),
        ]
        diff = decision_diff(rows, examples=3)
        assert (diff["evaluated"], diff["unchanged"], diff["changed"]) == (7, 1, 6)
        assert diff["current"] == {"allow": 6, "approval": 0, "deny": 1}
        assert diff["candidate"] == {"allow": 2, "approval": 1, "deny": 4}
        first, *rest = diff["changes"]
        assert first == {
            "from": "allow",
            "to": "deny",
            "count": 4,
            "by_agent": {"bot": 3, "eve": 1},
            "by_tool": {"srv/write": 4},
            "by_policy": {"no-write": 4},
            "examples": ["i1", "i2", "i3"],
        }
        assert [(c["from"], c["to"], c["count"]) for c in rest] == [("allow", "approval", 1), ("deny", "allow", 1)]
        assert "examples" not in counts_only(diff)["changes"][0]
        assert counts_only(diff)["changes"][0]["count"] == 4

    def test_the_same_bundle_changes_nothing(self) -> None:
        bundle = compile_bundle(FORBID_WRITE)
        diff = decision_diff(replay([view("bot", "write"), view("bot", "read")], bundle, bundle, Scope(), now=NOW))
        assert (diff["evaluated"], diff["changed"], diff["changes"]) == (2, 0, [])


class TestShadow:
    def test_a_shadow_record_says_both_decisions_and_whether_they_agree(self) -> None:
        enforced, candidate = compile_bundle(PERMIT_ALL), compile_bundle(ASK_WRITE)
        write = view("bot", "write")
        record = shadow_decided(write, decide(write, enforced, now=NOW), enforced, candidate, now=NOW)
        assert (record.enforced_kind, record.shadow_kind, record.agrees) == ("allow", "approval", False)
        assert (record.shadow_digest, record.enforced_digest) == (candidate.digest, enforced.digest)
        assert record.shadow_policy_ids == ["ask"]
        read = view("bot", "read")
        assert shadow_decided(read, decide(read, enforced, now=NOW), enforced, candidate, now=NOW).agrees

    def test_the_fold_and_so_the_receipt_leave_a_shadow_decision_out(self) -> None:
        events = history("bot", "write")
        record = ev.PolicyShadowDecided(
            shadow_digest="s", shadow_kind="deny", shadow_policy_ids=[], enforced_kind="allow", agrees=False
        )
        env = make_envelope(
            record, producer=PRODUCER, intent_id=events[0].envelope.intent_id, agent_id=events[0].envelope.agent_id
        )
        folded = fold_intent([*events, decode(encode(env), seq=9)])
        assert [e.type for e in folded.events] == [e.type for e in events]
        assert folded.status == "planned"

    def test_verdicts_of_each_decision(self) -> None:
        assert verdict_of(ev.IntentAuthorized(policy_digest="d", policy_ids=["a"])) == Verdict("allow", ("a",))
        denied = ev.IntentDenied(policy_digest="d", policy_ids=[], code="no_permit", reason="r")
        assert verdict_of(denied) == Verdict("deny", (), "no_permit")
        with pytest.raises(ValueError, match="not a decision"):
            verdict_of(ev.IntentExpired(stage="authorize", reason="r"))


def test_since_takes_a_span_or_a_time() -> None:
    assert parse_since("7d", NOW) == NOW - timedelta(days=7)
    assert parse_since("30m", NOW) == NOW - timedelta(minutes=30)
    assert parse_since("2026-02-01T00:00:00Z", NOW) == datetime(2026, 2, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither a span"):
        parse_since("last week", NOW)
