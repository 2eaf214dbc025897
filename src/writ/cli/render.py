"""How agents, servers, tools, intents and receipts look on a terminal."""

from __future__ import annotations

import json
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from writ_common.events import Receipt

STATUS_STYLE = {
    "succeeded": "bold green",
    "failed": "bold red",
    "rejected": "bold red",
    "denied": "bold red",
    "expired": "bold yellow",
    "cancelled": "bold yellow",
    "outcome_unknown": "bold magenta",
    "awaiting_approval": "bold yellow",
}


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, "bold cyan"))


def short_digest(digest: str | None, length: int = 12) -> str:
    if not digest:
        return "-"
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:length]}" if hexpart else digest[:length]


def whole(header: str, values: list[str]) -> dict[str, Any]:
    """Column options for an identifier (intent id, agent, tool, key id): never cut or wrapped, so it
    can be copied into the next command; the other columns give way on a narrow terminal."""
    return {"no_wrap": True, "min_width": max([len(header), *map(len, values)])}


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[dim]no[/]"


def agents_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="agents", title_justify="left")
    table.add_column("agent", **whole("agent", [r["agent_id"] for r in rows]))
    for column in ("owner", "teams", "acts for"):
        table.add_column(column)
    table.add_column("key id", **whole("key id", [r.get("key_id") or "-" for r in rows]))
    table.add_column("status")
    for row in rows:
        table.add_row(
            row["agent_id"],
            row.get("owner") or "-",
            ", ".join(row.get("teams") or []) or "-",
            ", ".join(row.get("acts_for") or []) or "-",
            row.get("key_id") or "-",
            agent_status(row),
        )
    return table


def agent_status(row: dict[str, Any]) -> str:
    """active, revoked, or suspended with its code and since when (``writ agent show`` has the figures)."""
    status = str(row.get("status") or "active")
    if status == "suspended":
        return f"[red]suspended[/] ({row.get('suspended_code')}, since {row.get('suspended_at')})"
    return f"[red]{status}[/]" if status == "revoked" else status


def servers_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="servers", title_justify="left")
    table.add_column("server", **whole("server", [r["name"] for r in rows]))
    for column in ("transport", "target", "tools", "at once", "secrets"):
        table.add_column(column, justify="right" if column in ("tools", "at once") else "left", overflow="fold")
    for row in rows:
        table.add_row(
            row["name"],
            row["transport"],
            row.get("target") or "-",
            str(row.get("tools", 0)),
            str(row.get("max_concurrency") or "-"),  # its declared capacity: the most calls it takes at once
            ", ".join(row.get("secrets") or []) or "-",
        )
    return table


def secrets_table(rows: list[dict[str, Any]]) -> Table:
    """Names only: a value never reaches the CLI."""
    table = Table(title="secrets", title_justify="left")
    for column in ("secret", "set at", "referenced by"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row.get("set_at") or "-", ", ".join(row.get("referenced_by") or []) or "-")
    return table


def tools_table(rows: list[dict[str, Any]], title: str = "tools", *, width: int = 80) -> Table:
    """Server, tool, version (short digest) and the hints policy reads; descriptions when there is room."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column, key in (("server", "server"), ("tool", "name")):
        table.add_column(column, no_wrap=True, min_width=max([len(column), *(len(r[key]) for r in rows)]))
    table.add_column("version", no_wrap=True, min_width=12)
    for column in ("read-only", "destructive", "idempotent"):
        table.add_column(column, justify="center", min_width=len(column), no_wrap=True)
    fixed = sum(c.min_width or 0 for c in table.columns) + 3 * len(table.columns)
    described = width - fixed >= 30
    if described:
        table.add_column("description", overflow="ellipsis", no_wrap=True, max_width=width - fixed - 3)
    for row in rows:
        ann = row.get("annotations") or {}
        cells = [
            row["server"],
            row["name"],
            short_digest(row.get("tool_digest")).partition(":")[2] or "-",
            _yes(bool(ann.get("read_only"))),
            _yes(bool(ann.get("destructive"))),
            _yes(bool(ann.get("idempotent"))),
        ]
        if described:
            lines = (row.get("description") or "").strip().splitlines()
            cells.append(lines[0] if lines else "")
        table.add_row(*cells)
    return table


def tool_name(server: str | None, tool: str | None) -> str:
    if tool and "/" in tool:
        return tool  # already server/tool, as the agent named it
    return "/".join(p for p in (server, tool) if p) or "-"


def intent_row(row: dict[str, Any], receipt_position: int | None) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("intent", row.get("intent_id") or "-")
    table.add_row("agent", row.get("agent_id") or "-")
    table.add_row("tool", tool_name(row.get("server"), row.get("tool")))
    table.add_row("status", status_text(str(row.get("status"))))
    for field in ("code", "reason", "submitted_at", "updated_at"):
        if row.get(field):
            table.add_row(field.replace("_", " "), str(row[field]))
    receipt = f"#{receipt_position} · `writ receipt show {row.get('intent_id')}`" if receipt_position else None
    table.add_row("receipt", receipt or "no receipt yet")
    return table


def tool_output(result: dict[str, Any] | None) -> RenderableType | None:
    """The tool's answer: structuredContent as JSON if present, else its text content."""
    if not result:
        return None
    structured = result.get("structuredContent")
    if structured is not None:
        return Syntax(json.dumps(structured, indent=2, ensure_ascii=False), "json", background_color="default")
    texts = [c.get("text", "") for c in result.get("content", []) if isinstance(c, dict) and c.get("type") == "text"]
    text = "\n".join(texts).strip()
    if not text:
        return Text("(no text content)", style="dim")
    try:
        parsed = json.loads(text)
    except ValueError:
        return Text(text)
    return Syntax(json.dumps(parsed, indent=2, ensure_ascii=False), "json", background_color="default")


def receipt_panel(receipt: Receipt, title: str | None = None) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("status", status_text(receipt.status))
    table.add_row("stage", receipt.stage)
    table.add_row("code", receipt.code)
    table.add_row("reason", receipt.reason)
    table.add_row("tool", tool_name(receipt.server, receipt.tool))
    table.add_row("agent", receipt.agent_id)
    if receipt.policy_ids:
        table.add_row("policies", ", ".join(receipt.policy_ids))
    table.add_row("position", f"#{receipt.position}")
    table.add_row("hash", receipt.receipt_hash)
    table.add_row("prev", receipt.prev_hash)
    table.add_row("signed by", receipt.ledger_key_id)
    parts: list[RenderableType] = [table]
    output = tool_output(receipt.result)
    if output is not None:
        parts += [Text(""), Text("tool output", style="bold"), output]
    return Panel(
        Group(*parts),
        title=title or f"receipt · {receipt.intent_id}",
        title_align="left",
        border_style=STATUS_STYLE.get(receipt.status, "cyan").removeprefix("bold "),
    )


# -- approvals --------------------------------------------------------------------------------------


def approvers_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="approvers", title_justify="left")
    table.add_column("approver", **whole("approver", [r["approver_id"] for r in rows]))
    table.add_column("groups")
    table.add_column("key id", **whole("key id", [r.get("key_id") or "-" for r in rows]))
    table.add_column("active")
    for row in rows:
        table.add_row(
            row["approver_id"],
            ", ".join(row.get("groups") or []) or "-",
            row.get("key_id") or "-",
            _yes(bool(row.get("active", True))),
        )
    return table


def quorum_text(request: dict[str, Any]) -> str:
    """``1/2 granted (alice)``: how far the request is from its quorum."""
    granted = list(request.get("granted_by") or [])
    who = f" ({', '.join(granted)})" if granted else ""
    return f"{len(granted)}/{request.get('quorum', 1)} granted{who}"


def approvals_table(rows: list[dict[str, Any]], title: str = "pending approvals") -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("intent", **whole("intent", [r["intent_id"] for r in rows]))
    table.add_column("agent", **whole("agent", [r.get("agent_id") or "-" for r in rows]))
    table.add_column("tool", **whole("tool", [r.get("tool") or "-" for r in rows]))
    table.add_column("arguments", overflow="fold")
    table.add_column("group", **whole("group", [r.get("approvers") or "-" for r in rows]))
    table.add_column("quorum")
    table.add_column("expires at", overflow="fold")
    for row in rows:
        table.add_row(
            row["intent_id"],
            row.get("agent_id") or "-",
            row.get("tool") or "-",
            json.dumps(row.get("arguments") or {}, ensure_ascii=False),
            row.get("approvers") or "-",
            quorum_text(row),
            row.get("expires_at") or "-",
        )
    return table


def approval_panel(request: dict[str, Any], title: str | None = None) -> Panel:
    """Everything an approver judges: who asks, for whom, which tool version, which arguments, under which policy."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    ann = request.get("annotations") or {}
    hints = [name for name in ("read_only", "destructive", "idempotent", "open_world") if ann.get(name)]
    table.add_row("intent", request["intent_id"])
    table.add_row("status", status_text(str(request.get("status") or "-")))
    table.add_row("agent", request.get("agent_id") or "-")
    table.add_row("on behalf of", request.get("on_behalf_of") or "-")
    table.add_row("owner", request.get("owner") or "-")
    table.add_row("tool", request.get("tool") or "-")
    table.add_row("version", request.get("tool_digest") or "-")
    table.add_row("hints", ", ".join(h.replace("_", "-") for h in hints) or "-")
    table.add_row("args digest", request.get("args_digest") or "-")
    table.add_row("policies", ", ".join(request.get("policy_ids") or []) or "-")
    table.add_row("group", request.get("approvers") or "-")
    table.add_row("quorum", quorum_text(request))
    table.add_row("deadline", request.get("deadline") or "-")
    table.add_row("expires at", request.get("expires_at") or "-")
    table.add_row("digest", request.get("approval_digest") or "-")
    arguments = json.dumps(request.get("arguments") or {}, indent=2, ensure_ascii=False, sort_keys=True)
    parts: list[RenderableType] = [
        table,
        Text(""),
        Text("arguments", style="bold"),
        Syntax(arguments, "json", background_color="default", word_wrap=True),
    ]
    return Panel(
        Group(*parts),
        title=title or f"approval request · {request['intent_id']}",
        title_align="left",
        border_style="yellow",
    )


def decision_text(outcome: dict[str, Any], decision: str) -> Text:
    """What a decision did: ``granted 1/2``, ``authorized``, ``denied``."""
    granted = list(outcome.get("granted_by") or [])
    quorum = outcome.get("quorum", 1)
    match outcome.get("outcome"):
        case "granted":
            return Text.assemble(
                ("granted", "bold green"), f" {len(granted)}/{quorum} · waiting for {quorum - len(granted)} more"
            )
        case "authorized":
            return Text.assemble(
                ("authorized", "bold green"),
                f" {len(granted)}/{quorum} · {outcome.get('reason') or 'the call runs now'}",
            )
        case "denied":
            return Text.assemble(("denied", "bold red"), f" · {outcome.get('reason') or 'the intent ends as denied'}")
    return Text(f"{decision} recorded: {outcome.get('outcome')}")


# -- views ------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def views_intents_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="intents", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("intent", **whole("intent", [r["intent_id"] for r in rows]))
    table.add_column("submitted", no_wrap=True, min_width=19)
    table.add_column("agent", **whole("agent", [r.get("agent_id") or "-" for r in rows]))
    tools = [tool_name(r.get("server"), r.get("tool_name") or r.get("tool")) for r in rows]
    table.add_column("tool", **whole("tool", tools))
    for column in ("status", "code", "attempts", "total ms"):
        right = column in ("attempts", "total ms")
        table.add_column(column, overflow="fold", min_width=len(column), justify="right" if right else "left")
    for row in rows:
        table.add_row(
            row["intent_id"],
            (row.get("submitted_at") or "-")[:19].replace("T", " "),
            row.get("agent_id") or "-",
            tool_name(row.get("server"), row.get("tool_name") or row.get("tool")),
            status_text(str(row.get("status"))),
            row.get("code") or "-",
            str(row.get("attempts") or 0),
            _ms(row.get("total_ms")),
        )
    return table


STAGES = (
    ("submitted", "submitted_at", None),
    ("authenticated", "authenticated_at", "authenticate_ms"),
    ("planned", "planned_at", "plan_ms"),
    ("approval requested", "approval_requested_at", "authorize_ms"),
    ("decided", "decided_at", "approval_ms"),
    ("started", "started_at", None),
    ("ended", "ended_at", "execute_ms"),
)


def views_intent_panel(found: dict[str, Any]) -> Panel:
    """An intent from the views: what, how it ended, when each stage happened, and its whole history."""
    row = found["intent"]
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column(overflow="fold")
    head.add_row("intent", row["intent_id"])
    head.add_row("agent", row["agent_id"] + (f" for {row['on_behalf_of']}" if row.get("on_behalf_of") else ""))
    head.add_row("tool", tool_name(row.get("server"), row.get("tool_name") or row.get("tool")))
    head.add_row("version", row.get("tool_digest") or "-")
    head.add_row("status", status_text(str(row["status"])))
    if row.get("code"):
        head.add_row("reason", f"{row['code']}: {row.get('reason') or ''}")
    head.add_row("attempts", f"{row.get('attempts', 0)} ({row.get('retries', 0)} retried)")
    head.add_row("total", f"{_ms(row.get('total_ms'))} ms")

    stages = Table(title="stages", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("stage", "at", "ms since previous"):
        stages.add_column(column, justify="right" if column.startswith("ms") else "left")
    for label, at_key, ms_key in STAGES:
        if row.get(at_key):
            stages.add_row(label, row[at_key], _ms(row.get(ms_key)) if ms_key else "")

    parts: list[RenderableType] = [head, Text(""), stages]
    if found.get("decisions"):
        decisions = Table(title="decisions", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
        for column in ("kind", "policies", "policy digest", "code"):
            decisions.add_column(column)
        for d in found["decisions"]:
            decisions.add_row(d["kind"], ", ".join(d["policy_ids"]) or "-", short_digest(d.get("policy_digest")),
                              d.get("code") or "-")  # fmt: skip
        parts += [decisions]
    if found.get("approval"):
        a = found["approval"]
        parts.append(
            Text(
                f"approval · {a['status']} · group {a['approver_group']} · quorum {a['quorum']}"
                f" · granted by {', '.join(a['granted_by']) or '-'}"
                + (f" · denied by {a['denied_by']}" if a.get("denied_by") else "")
                + (f" · decided {a['decided_at']}" if a.get("decided_at") else "")
            )
        )
    if found.get("executions"):
        attempts = Table(title="attempts", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
        for column in ("attempt", "outcome", "code", "ms", "started"):
            attempts.add_column(column)
        for e in found["executions"]:
            attempts.add_row(str(e["attempt"]), e["outcome"], e.get("code") or "-", _ms(e.get("duration_ms")),
                             e["started_at"])  # fmt: skip
        parts.append(attempts)
    history = Table(title="history", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("seq", "event", "at", "by"):
        history.add_column(column, justify="right" if column == "seq" else "left")
    for e in found.get("events") or []:
        history.add_row(str(e["seq"]), e["type"], e["occurred_at"], e["producer"])
    parts.append(history)
    receipt = found.get("receipt")
    parts.append(
        Text(
            f"receipt #{receipt['position']} · {receipt['receipt_hash']}" if receipt else "no receipt yet", style="bold"
        )
    )
    return Panel(Group(*parts), title=f"intent · {row['intent_id']}", title_align="left",
                 border_style=STATUS_STYLE.get(str(row["status"]), "cyan").removeprefix("bold "))  # fmt: skip


def views_stats_table(rows: list[dict[str, Any]], by: str) -> Table:
    table = Table(title=f"stats by {by}", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column(by, no_wrap=True)
    numbers = ("calls", "succeeded", "denials", "failures", "rejections", "expirations")
    for column in (*numbers, "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            str(row["key"]),
            *(f"{row[n]:,}" for n in numbers),
            _ms(row.get("p50_ms")),
            _ms(row.get("p95_ms")),
            _ms(row.get("p99_ms")),
        )
    return table


def sql_table(columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    return table


def views_status_table(streams: list[dict[str, Any]]) -> Table:
    table = Table(title="views", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("stream", "position", "head", "events behind", "seconds behind"):
        table.add_column(column, justify="left" if column == "stream" else "right")
    for s in streams:
        behind = s["events_behind"]
        style = "green" if behind == 0 else "yellow"
        table.add_row(s["stream"], f"{s['position']:,}", f"{s['head']:,}", f"[{style}]{behind:,}[/]",
                      f"{s['seconds_behind']:.3f}")  # fmt: skip
    return table


# -- a candidate policy against the enforced one ----------------------------------------------------


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {n:,}" for key, n in counts.items()) or "-"


def simulation_table(diff: dict[str, Any]) -> Table:
    """Each change of decision (enforced -> candidate), with who, which tool, which policy decides now."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("now", "candidate", "count", "by agent", "by tool", "deciding policy", "examples"):
        table.add_column(column, overflow="fold", justify="right" if column == "count" else "left")
    for change in diff["changes"]:
        table.add_row(
            change["from"],
            Text(change["to"], style="bold red" if change["to"] == "deny" else "bold yellow"),
            f"{change['count']:,}",
            counts_text(change["by_agent"]),
            counts_text(change["by_tool"]),
            counts_text(change["by_policy"]),
            "\n".join(change.get("examples") or []) or "-",
        )
    return table


def shadow_tables(out: dict[str, Any]) -> Group:
    """Per shadow bundle: decisions seen, agreement, and the disagreements, newest first."""
    bundles = Table(title="shadow bundles", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("shadow digest", "decisions", "agreed", "disagreed", "enforced -> shadow", "last"):
        bundles.add_column(column, no_wrap=column != "enforced -> shadow", overflow="fold")
    for b in out["bundles"]:
        changes = ", ".join(f"{c['from']} -> {c['to']} {c['count']:,}" for c in b["changes"]) or "-"
        agreed = f"{b['agreed']:,} ({100.0 * b['agreed'] / b['decisions']:.1f}%)" if b["decisions"] else "0"
        bundles.add_row(
            short_digest(b["shadow_digest"]), f"{b['decisions']:,}", agreed, f"{b['disagreed']:,}", changes,
            b["last_at"] or "-",
        )  # fmt: skip
    rows = Table(title="disagreements", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("intent", "agent", "tool", "enforced", "shadow", "shadow policies", "at"):
        rows.add_column(column, overflow="fold")
    for d in out["disagreements"]:
        shadow = d["shadow_kind"] + (f" ({d['shadow_code']})" if d.get("shadow_code") else "")
        rows.add_row(
            d["intent_id"], d["agent_id"], d.get("tool") or "-", d["enforced_kind"], shadow,
            ", ".join(d["shadow_policy_ids"]) or "-", d["decided_at"],
        )  # fmt: skip
    return Group(bundles, rows)


def rollout_text(r: dict[str, Any]) -> Group:
    """A rollout: its slice, triggers and state; how it ended and the signals that decided it."""
    colour = {"in_progress": "yellow", "promoted": "green", "rolled_back": "red"}.get(r["status"], "white")
    slice_ = f"{r['percent']:g}% of agents" if r.get("percent") is not None else ", ".join(r["agents"])
    lines: list[Any] = [
        f"rollout   {r['rollout_id']}  [{colour}]{r['status']}[/]" + (f" by {r['by']}" if r.get("by") else ""),
        f"candidate {r['candidate_digest']}",
        f"previous  {r['previous_digest'] or '-'}",
        f"slice     {slice_}",
        f"soak      promote after {r['promote_after_s']:g}s (cooldown {r['cooldown_s']:g}s,"
        f" at least {r['min_decisions']} decisions per signal)",
        f"started   {r['started_at']}" + (f"   ended {r['ended_at']}" if r.get("ended_at") else ""),
    ]
    lines += [f"trigger   {t}" for t in r["triggers"]]
    if r.get("reason"):
        lines.append(f"why       {r['reason']}")
    if r.get("signals"):
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in ("trigger", "value", "threshold", "samples", "in breach since"):
            table.add_column(column, overflow="fold")
        breach = r.get("in_breach") or {}
        for s in r["signals"]:
            table.add_row(
                s["trigger"], signal_value(s), f"{s['threshold']:g}", str(s["samples"]), breach.get(s["trigger"], "-")
            )
        lines.append(table)
    for earlier in r.get("earlier") or []:
        lines.append(
            f"earlier   {earlier['rollout_id']} {earlier['status']} {short_digest(earlier['candidate_digest'])}"
            f" {earlier.get('ended_at') or ''} {earlier.get('reason') or ''}"
        )
    return Group(*lines)


def signal_value(s: dict[str, Any]) -> str:
    """A trigger's value, what every agent's intents read where leaving one out made it lower (no
    one agent carries a signal), and what it reads without the agent that hides it (nor hides one)."""
    value = "-" if s["value"] is None else f"{s['value']:g}"
    notes = []
    if s.get("left_out"):
        every = "-" if s.get("every_agent") is None else f"{s['every_agent']:g}"
        notes.append(f"{every} counting {s['left_out']}")
    if s.get("hidden") is not None:
        notes.append(f"{s['hidden']:g} without {s['hidden_by']}: promotion waits")
    return f"{value} ({'; '.join(notes)})" if notes else value


def rollouts_table(rows: list[dict[str, Any]]) -> Table:
    """The views' rollouts: one row each, with the signals its ending read."""
    table = Table(title="rollouts", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("rollout", "status", "candidate", "previous", "slice", "decisions", "why", "signals", "ended"):
        table.add_column(column, overflow="fold")
    for r in rows:
        slice_ = f"{r['percent']:g}%" if r.get("percent") is not None else ",".join(r.get("agents") or [])
        signals = "; ".join(f"{s['signal']}={signal_value(s)} (n={s['samples']})" for s in r["signals"])
        decided = ", ".join(f"{k} {v}" for k, v in sorted(r["candidate_decisions"].items())) or "-"
        status = r["status"] + (f" by {r['ended_by']}" if r.get("ended_by") else "")
        table.add_row(
            r["rollout_id"], status, short_digest(r["candidate_digest"]), short_digest(r["previous_digest"]), slice_,
            decided, r.get("reason") or "-", signals or "-", r.get("ended_at") or "-",
        )  # fmt: skip
    return table
