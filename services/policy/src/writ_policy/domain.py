"""Policy's rules: may this agent make this call, now? Cedar decides; pure functions here."""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import cedarpy
import msgspec

from writ_common import events as ev
from writ_common import operations
from writ_common.approvals import request_digest
from writ_common.digest import policy_digest
from writ_common.envelope import StoredEvent
from writ_common.errors import Refusal
from writ_common.fold import IntentView
from writ_common.ids import TOKEN_RULE, is_token

DEFAULT_APPROVAL_TTL = timedelta(hours=1)


class PolicyError(Exception):
    """A policy bundle that Cedar cannot parse; the message says where."""


@dataclass(frozen=True, slots=True)
class Bundle:
    """A parsed Cedar bundle: parsed once when published, reused for every decision."""

    digest: str
    cedar: str
    policy_set: cedarpy.PolicySet
    names: dict[str, str]  # Cedar's policy id -> @id annotation (or the Cedar id)
    annotations: dict[str, dict[str, str]]
    rate_limits: dict[str, RateLimit]  # @id of a permit -> its @rate_limit


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` calls per agent and tool in any sliding ``window_s`` seconds."""

    policy_id: str
    limit: int
    window_s: int

    @property
    def text(self) -> str:
        return f"{self.limit} per {_window_text(self.window_s)}"

    def key(self, agent_id: str, tool: str) -> str:
        return f"writ:rate:{self.policy_id}:{agent_id}:{tool}"


@dataclass(frozen=True, slots=True)
class RateExceeded:
    """What the counter saw when it refused: the limit, how many calls it holds, when one frees."""

    limit: RateLimit
    count: int
    retry_after_s: float


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate_limit(policy_id: str, text: str) -> RateLimit:
    """``@rate_limit("N/<count><unit>")``, unit s, m, h or d: "10/1m", "100/h", "5/30s".

    Raises:
        PolicyError: the annotation says something else, or a zero limit or window.
    """
    match = _RATE.match(text)
    if not match:
        raise PolicyError(
            f'policy {policy_id!r}: @rate_limit({text!r}) must look like "10/1m" (calls / window; s, m, h or d)'
        )
    limit, count, unit = int(match[1]), int(match[2] or 1), match[3]
    window = count * _UNIT_SECONDS[unit]
    if limit < 1 or window < 1:
        raise PolicyError(f"policy {policy_id!r}: @rate_limit({text!r}) needs a limit and a window of at least 1")
    return RateLimit(policy_id=policy_id, limit=limit, window_s=window)


def _window_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def compile_bundle(cedar: str) -> Bundle:
    """Parse and index a Cedar policy bundle.

    Raises:
        PolicyError: the text is not valid Cedar, or has no policy.
    """
    try:
        policy_set = cedarpy.PolicySet.from_str(cedar)
        as_json = json.loads(cedarpy.policies_to_json_str(cedar))
    except (ValueError, RuntimeError) as exc:
        raise PolicyError(str(exc)) from exc
    static: dict[str, Any] = as_json.get("staticPolicies", {})
    if not static:
        raise PolicyError("the bundle contains no policy")
    annotations = {pid: dict(p.get("annotations") or {}) for pid, p in static.items()}
    names = {pid: ann.get("id", pid) for pid, ann in annotations.items()}
    rate_limits = {
        names[pid]: parse_rate_limit(names[pid], ann["rate_limit"])
        for pid, ann in annotations.items()
        if "rate_limit" in ann
    }
    return Bundle(policy_digest(cedar), cedar, policy_set, names, annotations, rate_limits)


def check_names(bundle: Bundle) -> None:
    """Names a bundle hands on to the bus must be subject tokens: an approval group becomes
    ``writ.notice.approvals.<group>.*`` and an approver's permissions.

    Raises:
        PolicyError: naming the policy and the group.
    """
    for pid, ann in bundle.annotations.items():
        group = ann.get("approval")
        if group is not None and not is_token(group):
            raise PolicyError(f"policy {bundle.names[pid]!r}: approval group {group!r} must match {TOKEN_RULE}")


def bundle_from_event(event: StoredEvent) -> Bundle | None:
    if isinstance(event.payload, ev.PolicyBundlePublished):
        return compile_bundle(event.payload.cedar)
    return None


CEDAR_LONG_MIN, CEDAR_LONG_MAX = -(2**63), 2**63 - 1
_DECIMAL_PLACES = 4  # Cedar's decimal: up to 4 fractional digits, within the Long range scaled by 10**4


def _cedar_number(value: float) -> Any:
    """A JSON number as Cedar can compare it: an integral float (``5000.0``) is the Long it equals,
    so ``amount > 1000`` holds for it as for ``5000``; any other a Cedar ``decimal`` (compared with
    ``.greaterThan()``; ``>`` on it errors, and an error denies); what neither can hold, a string."""
    if value.is_integer() and CEDAR_LONG_MIN <= value <= CEDAR_LONG_MAX:
        return int(value)
    if math.isfinite(value) and round(value, _DECIMAL_PLACES) == value:
        text = f"{value:.{_DECIMAL_PLACES}f}".rstrip("0")
        if abs(value) < (CEDAR_LONG_MAX // 10**_DECIMAL_PLACES):
            return {"__extn": {"fn": "decimal", "arg": text + ("0" if text.endswith(".") else "")}}
    return repr(value)


def _cedar_value(value: Any) -> Any:
    """Arguments as Cedar values: numbers keep their type (:func:`_cedar_number`); Cedar has no
    nulls, so they are dropped."""
    if isinstance(value, dict):
        return {str(k): _cedar_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_cedar_value(v) for v in value if v is not None]
    if isinstance(value, float):
        return _cedar_number(value)
    return value


_POLICY_IN_ERROR = re.compile(r"policy `([^`]+)`")
_QUOTED = re.compile(r"`([^`]*)`")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def _error_text(error: str) -> str:
    """Cedar's error without the values it quotes (an overflow names the operands): quoted names
    (an attribute, a type) stay, anything else quoted becomes an ellipsis."""
    text = error.split("`: ", 1)[1] if error.startswith("error while evaluating policy") else error
    return _QUOTED.sub(lambda m: f"`{m[1]}`" if _NAME.match(m[1]) else "`…`", text)


def policy_error(view: IntentView, bundle: Bundle, errors: list[str]) -> ev.IntentDenied:
    """Cedar skips a policy whose evaluation errors, which would let a ``forbid`` be skipped by an
    argument of a type it did not expect: here any error denies the call, naming the policy."""
    planned = view.planned
    assert planned is not None
    ids = list(dict.fromkeys(m[1] for e in errors if (m := _POLICY_IN_ERROR.search(e))))
    names = [bundle.names.get(pid, pid) for pid in ids]
    what = f"policy {', '.join(repr(n) for n in names)}" if names else "the request"
    detail = "; ".join(dict.fromkeys(_error_text(e) for e in errors))
    return ev.IntentDenied(
        policy_digest=bundle.digest,
        policy_ids=names,
        code="policy_error",
        reason=f"policy_error: {what} could not be evaluated for {planned.server}/{planned.tool} ({detail}); denied",
    )


def cedar_request(view: IntentView) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Cedar request and entities for this intent."""
    intent, planned, auth = view.submitted, view.planned, view.authenticated
    assert intent is not None and planned is not None and view.agent_id
    teams = auth.teams if auth else []
    tool_uid = f"{planned.server}/{planned.tool}"
    kind, arguments = "Tool", intent.arguments
    attrs: dict[str, Any] = {
        "server": planned.server,
        "name": planned.tool,
        "read_only": planned.annotations.read_only,
        "destructive": planned.annotations.destructive,
        "idempotent": planned.annotations.idempotent,
        "open_world": planned.annotations.open_world,
    }
    if intent.operation != operations.CALL_TOOL:
        # Another governed MCP operation: its target is a Resource (by URI) or a Prompt (by name);
        # its arguments are not shown to policies (they are not typed by the catalog).
        kind, arguments = operations.entity_of(intent.operation, intent.arguments), {}
        if kind == "Resource":
            attrs["uri"] = planned.tool
    entities: list[dict[str, Any]] = [
        {
            "uid": {"type": "Agent", "id": view.agent_id},
            "attrs": {"owner": (auth.owner if auth and auth.owner else "")},
            "parents": [{"type": "Team", "id": t} for t in teams],
        },
        *({"uid": {"type": "Team", "id": t}, "attrs": {}, "parents": []} for t in teams),
        {"uid": {"type": kind, "id": tool_uid}, "attrs": attrs, "parents": []},
    ]
    # Entity ids as {type, id}: Cedar takes them as they are, with no surface syntax to parse or escape.
    request: dict[str, Any] = {
        "principal": {"type": "Agent", "id": view.agent_id},
        "action": {"type": "Action", "id": intent.operation},
        "resource": {"type": kind, "id": tool_uid},
        "context": {"arguments": _cedar_value(arguments), "on_behalf_of": intent.on_behalf_of or ""},
    }
    return request, entities


@functools.lru_cache(maxsize=4096)
def parsed_entities(entities_json: str) -> cedarpy.Entities:
    """The entities parsed once per distinct set: an agent calling a tool again presents the same
    agent, teams and tool, and parsing them was about half of a decision's cost."""
    return cedarpy.Entities.from_json_str(entities_json)


def decide(view: IntentView, bundle: Bundle | None, *, now: datetime) -> ev.Payload:
    """Allow, deny, or ask a person: forbid -> deny; permit with @approval -> approval;
    permit -> allow; nothing matches -> deny."""
    if bundle is None:
        return ev.IntentDenied(
            policy_digest=None, policy_ids=[], code="no_policy", reason="no_policy: no policy bundle is loaded"
        )
    planned = view.planned
    assert planned is not None and view.submitted is not None
    request, entities = cedar_request(view)
    result = cedarpy.is_authorized(request, bundle.policy_set, parsed_entities(json.dumps(entities)))
    if errors := [str(e) for e in result.diagnostics.errors]:
        return policy_error(view, bundle, errors)
    deciding = list(result.diagnostics.reasons)
    names = [bundle.names.get(pid, pid) for pid in deciding]
    if result.decision != cedarpy.Decision.Allow:
        if names:
            reason = f"forbidden: {', '.join(names)} forbids {planned.server}/{planned.tool}"
            code = "forbidden"
        else:
            verb = "call" if view.submitted.operation == operations.CALL_TOOL else view.submitted.operation
            reason = f"no_permit: no policy permits agent {view.agent_id!r} to {verb} {planned.server}/{planned.tool}"
            code = "no_permit"
        return ev.IntentDenied(policy_digest=bundle.digest, policy_ids=names, code=code, reason=reason)
    needing = [bundle.annotations.get(pid, {}) for pid in deciding if "approval" in bundle.annotations.get(pid, {})]
    if needing:
        ann = needing[0]
        ttl = timedelta(seconds=int(ann.get("ttl", DEFAULT_APPROVAL_TTL.total_seconds())))
        # A request never outlives the intent: past the deadline the call may not run anyway.
        expires_at = min(now + ttl, view.deadline or now + ttl).isoformat(timespec="seconds").replace("+00:00", "Z")
        group, quorum = ann["approval"], int(ann.get("quorum", "1"))
        owner_may_approve = ann.get("owner_may_approve", "false").lower() == "true"
        return ev.ApprovalRequested(
            approval_digest=request_digest(
                view,
                policy_digest=bundle.digest,
                approval_group=group,
                quorum=quorum,
                owner_may_approve=owner_may_approve,
                expires_at=expires_at,
            ),
            policy_digest=bundle.digest,
            policy_ids=names,
            group=group,
            quorum=quorum,
            owner_may_approve=owner_may_approve,
            on_behalf_of=view.submitted.on_behalf_of,
            tool=f"{planned.server}/{planned.tool}",
            tool_digest=planned.tool_digest,
            arguments=view.submitted.arguments,
            args_digest=planned.args_digest,
            deadline=view.submitted.deadline,
            expires_at=expires_at,
        )
    return ev.IntentAuthorized(
        policy_digest=bundle.digest, policy_ids=names, reasons=[f"permitted by {', '.join(names)}"]
    )


def rate_limits_for(decision: ev.Payload, bundle: Bundle | None) -> list[RateLimit]:
    """The limits a call must fit under: those of the permits that allowed it (or asked a person).
    A denial counts against nothing."""
    if bundle is None or not isinstance(decision, ev.IntentAuthorized | ev.ApprovalRequested):
        return []
    return [bundle.rate_limits[name] for name in decision.policy_ids if name in bundle.rate_limits]


def rate_limited(view: IntentView, decision: ev.Payload, exceeded: RateExceeded) -> ev.IntentDenied:
    """The permit allowed the call, but its rate limit is spent: deny, saying when to try again."""
    planned = view.planned
    assert planned is not None and isinstance(decision, ev.IntentAuthorized | ev.ApprovalRequested)
    limit = exceeded.limit
    retry = max(1, round(exceeded.retry_after_s + 0.499))
    return ev.IntentDenied(
        policy_digest=decision.policy_digest,
        policy_ids=[limit.policy_id],
        code="rate_limited",
        reason=(
            f"rate_limited: agent {view.agent_id!r} already made {exceeded.count} calls to "
            f"{planned.server}/{planned.tool} in the last {_window_text(limit.window_s)}; "
            f"{limit.policy_id} allows {limit.text}; try again in {retry}s"
        ),
        retry_after_s=retry,
    )


# -- the rules around a decision ----------------------------------------------------------------


def needs_decision(view: IntentView) -> bool:
    """Already decided? Only a plan that has neither an authorization nor an approval request is
    policy's to decide; anything else is a redelivered trigger whose decision is in the log."""
    return view.planned is not None and view.authorized is None and view.approval is None


@dataclass(frozen=True, slots=True)
class Uncounted:
    """The rate limit store could not count the call (``why``)."""

    why: str


def counted(view: IntentView, decision: ev.Payload, count: RateExceeded | Uncounted | None) -> ev.Payload | Refusal:
    """The decision once its rate limits were counted. Fail closed: a call that could not be counted
    is not decided at all (a Refusal, ``rate_store_unavailable``: the intent waits, or expires);
    a full window turns the permit into a ``rate_limited`` denial."""
    match count:
        case Uncounted():
            return Refusal(code="rate_store_unavailable", reason=f"not authorizing without counting: {count.why}")
        case RateExceeded():
            return rate_limited(view, decision, count)
        case None:
            return decision


def under_new_policy(denied: ev.IntentDenied) -> ev.IntentDenied:
    """A denial reached by re-deciding a waiting request under a newly loaded bundle."""
    return msgspec.structs.replace(
        denied, reason=f"{denied.reason} (the policy changed while the call waited for approval)"
    )


def redecision(view: IntentView, bundle: Bundle | None, *, now: datetime) -> list[ev.Payload]:
    """Under a new bundle, a request still waiting for people is decided again: if the new policy
    denies the call (an emergency forbid), it ends denied; a grant cannot revive it, and a request
    made under this very bundle (or already answered) is left alone."""
    request = view.approval
    if bundle is None or not view.approval_pending or request is None or request.policy_digest == bundle.digest:
        return []
    verdict = decide(view, bundle, now=now)
    return [under_new_policy(verdict)] if isinstance(verdict, ev.IntentDenied) else []


def recheck(view: IntentView, intent_id: str, bundle: Bundle | None, *, now: datetime) -> dict[str, Any] | Refusal:
    """Does the permit that authorized this intent still hold under ``bundle``? (Rate limits are
    not counted again: the call was counted when it was authorized.)"""
    if view.planned is None or view.submitted is None:
        return Refusal(code="not_found", reason=f"intent {intent_id!r} has no plan to decide on")
    verdict = decide(view, bundle, now=now)
    holds = isinstance(verdict, ev.IntentAuthorized | ev.ApprovalRequested)
    return {
        "holds": holds,
        "policy_digest": bundle.digest if bundle else None,
        "code": "ok" if holds else getattr(verdict, "code", "denied"),
        "reason": "" if holds else getattr(verdict, "reason", ""),
    }
