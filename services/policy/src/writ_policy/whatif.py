"""A candidate bundle against the enforced one, on the same intents: replayed over the recorded
history (``writ policy simulate``) and beside every live decision (the shadow bundle). Pure.

Both compare Cedar's decision (:func:`writ_policy.domain.decide`): rate limits count live calls,
so a replay neither reads nor spends them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from writ_common import events as ev
from writ_common.envelope import parse_time
from writ_common.fold import IntentView
from writ_policy.domain import Bundle, decide

Kind = Literal["allow", "approval", "deny"]
KINDS: tuple[Kind, ...] = ("allow", "approval", "deny")
_ORDER: dict[str, int] = {kind: i for i, kind in enumerate(KINDS)}
EXAMPLES = 3


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a decision comes to: its kind, the policies that decided it, a denial's code."""

    kind: Kind
    policy_ids: tuple[str, ...] = ()
    code: str = ""

    @property
    def deciding(self) -> str:
        """The deciding policies, or why none decided (``(no_permit)``, ``(no_policy)``)."""
        return ", ".join(self.policy_ids) or f"({self.code or 'none'})"


def verdict_of(decision: ev.Payload) -> Verdict:
    match decision:
        case ev.IntentAuthorized():
            return Verdict("allow", tuple(decision.policy_ids))
        case ev.ApprovalRequested():
            return Verdict("approval", tuple(decision.policy_ids))
        case ev.IntentDenied():
            return Verdict("deny", tuple(decision.policy_ids), decision.code)
        case _:
            raise ValueError(f"not a decision: {type(decision).__name__}")


def shadow_decided(
    view: IntentView, enforced: ev.Payload, enforced_bundle: Bundle | None, shadow: Bundle, *, now: datetime
) -> ev.PolicyShadowDecided:
    """The shadow bundle's decision on ``view`` beside the enforced bundle's (``enforced``, as Cedar
    decided it, before rate limits): recorded, never acted on."""
    mine, theirs = verdict_of(decide(view, shadow, now=now)), verdict_of(enforced)
    return ev.PolicyShadowDecided(
        shadow_digest=shadow.digest,
        shadow_kind=mine.kind,
        shadow_policy_ids=list(mine.policy_ids),
        shadow_code=mine.code,
        enforced_digest=enforced_bundle.digest if enforced_bundle else None,
        enforced_kind=theirs.kind,
        enforced_policy_ids=list(theirs.policy_ids),
        enforced_code=theirs.code,
        agrees=mine.kind == theirs.kind,
    )


# -- replaying the history ----------------------------------------------------------------------

_AGO = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: datetime) -> datetime:
    """``7d``, ``12h``, ``30m``, ``2w`` before ``now``, or an RFC 3339 time.

    Raises:
        ValueError: neither, in a sentence.
    """
    if match := _AGO.match(text):
        return now - timedelta(seconds=int(match[1]) * _UNIT[match[2]])
    try:
        return parse_time(text)
    except ValueError as exc:
        raise ValueError(f"since {text!r} is neither a span (7d, 12h, 30m) nor an RFC 3339 time") from exc


@dataclass(frozen=True, slots=True)
class Scope:
    """Which recorded intents to replay: submitted at or after ``since``, of ``agent``, calling
    ``tool`` (``server/tool``, its name, or as the agent asked for it)."""

    since: datetime | None = None
    agent: str | None = None
    tool: str | None = None

    def holds(self, view: IntentView) -> bool:
        """Policy decided on it (it was planned), and it is within the scope."""
        planned, submitted = view.planned, view.submitted_event
        if planned is None or submitted is None or view.submitted is None:
            return False
        if self.agent is not None and view.agent_id != self.agent:
            return False
        if self.tool is not None and self.tool not in (
            f"{planned.server}/{planned.tool}",
            planned.tool,
            view.submitted.tool,
        ):
            return False
        return self.since is None or parse_time(submitted.envelope.occurred_at) >= self.since


@dataclass(frozen=True, slots=True)
class Replayed:
    """One recorded intent decided again under the enforced bundle and under the candidate."""

    intent_id: str
    agent_id: str
    tool: str
    current: Verdict
    candidate: Verdict


def replay(
    views: Iterable[IntentView], current: Bundle | None, candidate: Bundle, scope: Scope, *, now: datetime
) -> list[Replayed]:
    """Each in-scope intent as it was planned (tool, annotations, arguments as submitted, the
    agent's teams and owner as authenticated then, on_behalf_of), decided by both bundles."""
    out = []
    for view in views:
        if not scope.holds(view):
            continue
        assert view.planned is not None and view.intent_id and view.agent_id
        out.append(
            Replayed(
                intent_id=view.intent_id,
                agent_id=view.agent_id,
                tool=f"{view.planned.server}/{view.planned.tool}",
                current=verdict_of(decide(view, current, now=now)),
                candidate=verdict_of(decide(view, candidate, now=now)),
            )
        )
    return out


@dataclass(slots=True)
class _Change:
    count: int = 0
    by_agent: Counter[str] = field(default_factory=Counter)
    by_tool: Counter[str] = field(default_factory=Counter)
    by_policy: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)


def decision_diff(rows: Iterable[Replayed], *, examples: int = EXAMPLES) -> dict[str, Any]:
    """How the candidate's decisions differ from the enforced bundle's, as plain data.

    Returns:
        ``evaluated``, ``unchanged``, ``changed``; ``current`` and ``candidate``: counts per kind;
        ``changes``: one entry per transition (``from`` -> ``to``, e.g. allow -> deny), most
        frequent first, with its count, the counts by agent, by tool and by the candidate's
        deciding policy (or why none decided, e.g. ``(no_permit)``), and up to ``examples``
        intent ids.
    """
    evaluated = 0
    current: Counter[str] = Counter()
    candidate: Counter[str] = Counter()
    changes: dict[tuple[str, str], _Change] = {}
    for row in rows:
        evaluated += 1
        current[row.current.kind] += 1
        candidate[row.candidate.kind] += 1
        if row.current.kind == row.candidate.kind:
            continue
        change = changes.setdefault((row.current.kind, row.candidate.kind), _Change())
        change.count += 1
        change.by_agent[row.agent_id] += 1
        change.by_tool[row.tool] += 1
        change.by_policy[row.candidate.deciding] += 1
        if len(change.examples) < examples:
            change.examples.append(row.intent_id)
    changed = sum(c.count for c in changes.values())
    ordered = sorted(changes.items(), key=lambda item: (-item[1].count, _ORDER[item[0][0]], _ORDER[item[0][1]]))
    return {
        "evaluated": evaluated,
        "unchanged": evaluated - changed,
        "changed": changed,
        "current": {kind: current[kind] for kind in KINDS},
        "candidate": {kind: candidate[kind] for kind in KINDS},
        "changes": [
            {
                "from": before,
                "to": after,
                "count": change.count,
                "by_agent": dict(change.by_agent.most_common()),
                "by_tool": dict(change.by_tool.most_common()),
                "by_policy": dict(change.by_policy.most_common()),
                "examples": change.examples,
            }
            for (before, after), change in ordered
        ],
    }


def counts_only(diff: dict[str, Any]) -> dict[str, Any]:
    """The diff for a summary-scope reader: the counts, without the example intents."""
    return {**diff, "changes": [{k: v for k, v in c.items() if k != "examples"} for c in diff["changes"]]}
