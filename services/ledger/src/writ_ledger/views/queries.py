"""Reading the views: filtered, cursor-paginated intents, one intent in full, stats, and ad-hoc SQL.

Every read opens its own connection with ``mode=ro`` and ``PRAGMA query_only``, so readers never
block the projection (WAL) and can never write, whatever they send.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, Literal

from writ_common.envelope import parse_time
from writ_common.errors import CodedError, Refusal
from writ_ledger.views.project import hour_of
from writ_ledger.views.schema import PRIVATE_TABLES

MAX_LIMIT = 500
SQL_MAX_ROWS = 1000
SQL_TIMEOUT_SECONDS = 5.0
SQLITE_MAX_INTEGER = 2**63 - 1
StatsBy = Literal["agent", "tool", "hour"]


class QueryError(CodedError):
    """A query the views refuse; ``code`` is stable, ``message`` is for people."""


READ_ONLY = Refusal(code="read_only", reason="the views are read-only: only SELECT statements run here")


def open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection to the views file (``mode=ro`` and ``query_only``)."""
    if not path.exists():
        raise QueryError("no_views", f"the views file {path} does not exist yet")
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA query_only = ON")
    return db


# -- intents ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntentFilter:
    agent: str | None = None
    tool: str | None = None
    status: str | None = None
    since: str | None = None
    until: str | None = None
    reason: str | None = None


def normalize_time(value: str, name: str) -> str:
    """An RFC 3339 time in the log's own format (UTC, microseconds, ``Z``), so strings compare as times."""
    try:
        parsed = parse_time(value)
    except ValueError as exc:
        raise QueryError("invalid_time", f"{name} {value!r} is not an RFC 3339 time with a timezone") from exc
    return parsed.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def encode_cursor(submitted_seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{submitted_seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, seq = text.partition(":")
        # ASCII digits only ("²".isdigit() holds), within SQLite's integers: else not ours.
        if version != "v1" or not (seq.isascii() and seq.isdigit()) or int(seq) > SQLITE_MAX_INTEGER:
            raise ValueError(text)
        return int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise QueryError("invalid_cursor", "the cursor is not one this API returned") from exc


def list_intents(
    db: sqlite3.Connection, where: IntentFilter, *, limit: int = 50, cursor: str | None = None
) -> dict[str, Any]:
    """Newest first (by the stream sequence of ``intent.submitted``: stable while rows change).

    Returns ``{"intents": [...], "next_cursor": str | None}``; pass ``next_cursor`` back for the next page.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError("invalid_limit", f"limit must be between 1 and {MAX_LIMIT}")
    clauses: list[str] = []
    args: list[Any] = []
    if where.agent:
        clauses.append("agent_id = ?")
        args.append(where.agent)
    if where.tool:
        clauses.append("(tool = ? OR tool_name = ? OR server || '/' || tool_name = ?)")
        args += [where.tool] * 3
    if where.status:
        clauses.append("status = ?")
        args.append(where.status)
    if where.since:
        clauses.append("submitted_at >= ?")
        args.append(normalize_time(where.since, "since"))
    if where.until:
        clauses.append("submitted_at < ?")
        args.append(normalize_time(where.until, "until"))
    if where.reason:
        clauses.append("(code = ? OR reason LIKE '%' || ? || '%')")
        args += [where.reason, where.reason]
    if cursor:
        clauses.append("submitted_seq < ?")
        args.append(decode_cursor(cursor))
    sql = "SELECT * FROM intents" + (" WHERE " + " AND ".join(clauses) if clauses else "")
    rows = [dict(r) for r in db.execute(sql + " ORDER BY submitted_seq DESC LIMIT ?", (*args, limit + 1))]
    more = len(rows) > limit
    rows = rows[:limit]
    return {"intents": rows, "next_cursor": encode_cursor(rows[-1]["submitted_seq"]) if more else None}


def get_intent(db: sqlite3.Connection, intent_id: str) -> dict[str, Any] | None:
    """One intent with everything the views hold about it: its full event history (payloads
    included), decisions, approval, executions and receipt."""
    row = db.execute("SELECT * FROM intents WHERE intent_id = ?", (intent_id,)).fetchone()
    if row is None:
        return None

    def rows(sql: str) -> list[dict[str, Any]]:
        return [dict(r) for r in db.execute(sql, (intent_id,))]

    events = rows("SELECT * FROM intent_events WHERE intent_id = ? ORDER BY seq")
    for event in events:
        event["payload"] = json.loads(event["payload"])
    decisions = rows("SELECT * FROM decisions WHERE intent_id = ? ORDER BY seq")
    for decision in decisions:
        decision["policy_ids"] = json.loads(decision["policy_ids"])
        decision["reasons"] = json.loads(decision["reasons"])
    approval = db.execute("SELECT * FROM approvals WHERE intent_id = ?", (intent_id,)).fetchone()
    approval_out: dict[str, Any] | None = None
    if approval is not None:
        approval_out = dict(approval)
        approval_out["granted_by"] = json.loads(approval_out["granted_by"])
        approval_out["decisions"] = rows("SELECT * FROM approval_decisions WHERE intent_id = ? ORDER BY seq")
    receipt = db.execute("SELECT body FROM receipts WHERE intent_id = ?", (intent_id,)).fetchone()
    return {
        "intent": dict(row),
        "events": events,
        "decisions": decisions,
        "approval": approval_out,
        "executions": rows("SELECT * FROM executions WHERE intent_id = ? ORDER BY attempt"),
        "receipt": json.loads(receipt[0]) if receipt else None,
    }


def previous_receipt_hash(db: sqlite3.Connection, position: int) -> str | None:
    """The hash of the receipt at ``position - 1``, if the views hold it."""
    row = db.execute("SELECT receipt_hash FROM receipts WHERE position = ?", (position - 1,)).fetchone()
    return str(row[0]) if row else None


# What a summary-scope reader does not see: every field that carries values rather than names,
# codes and digests. What the agent sent the tool and what came back; the idempotency key the
# agent chose (it may spell out an order or a person); what approvers and operators wrote.
# Reasons stay: they name the field and the rule, never the value (tool output is in ``result``).
WITHHELD_FIELDS = ("arguments", "result", "idempotency_key", "comment", "note")
WITHHELD = "[withheld: needs a full-scope token]"


def _withheld(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: (WITHHELD if k in WITHHELD_FIELDS and v not in (None, {}, "") else v) for k, v in row.items()}


def withhold_row(row: dict[str, Any]) -> dict[str, Any]:
    """An ``intents`` row as a summary-scope reader sees it."""
    out = _withheld(row)
    assert out is not None
    return out


def withhold_content(detail: dict[str, Any]) -> dict[str, Any]:
    """``detail`` (from :func:`get_intent`) with every value-bearing field replaced by a marker,
    in the intent row, every event payload, the approval and the receipt, and the list of what
    was withheld."""
    approval = _withheld(detail["approval"])
    if approval is not None and approval.get("decisions"):
        approval["decisions"] = [_withheld(d) for d in approval["decisions"]]
    return {
        **detail,
        "intent": _withheld(detail["intent"]),
        "events": [{**event, "payload": _withheld(event["payload"])} for event in detail["events"]],
        "approval": approval,
        "receipt": _withheld(detail["receipt"]),
        "withheld": list(WITHHELD_FIELDS),
    }


# -- stats --------------------------------------------------------------------------------------

_KEY = {"agent": "agent_id", "tool": "tool", "hour": "hour"}


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def stats(
    db: sqlite3.Connection, by: StatsBy = "agent", *, since: str | None = None, until: str | None = None
) -> list[dict[str, Any]]:
    """Calls and outcomes per agent, tool or hour (from the ``rollups`` table), with exact latency
    percentiles (submit to end, ms) computed at query time from every ended intent's ``total_ms``.

    ``since``/``until`` select whole hours (the rollups' grain), by submission time.
    """
    if by not in _KEY:
        raise QueryError("invalid_by", "by must be one of agent, tool, hour")
    key = _KEY[by]
    clauses, args = [], []
    if since:
        clauses.append("hour >= ?")
        args.append(hour_of(normalize_time(since, "since")))
    if until:
        clauses.append("hour <= ?")
        args.append(hour_of(normalize_time(until, "until")))
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    out: dict[str, dict[str, Any]] = {}
    for r in db.execute(
        f"SELECT {key} AS k, SUM(calls), SUM(succeeded), SUM(denials), SUM(failures), SUM(rejections),"
        f" SUM(expirations) FROM rollups{where} GROUP BY {key} ORDER BY {key}",
        args,
    ):
        out[r[0]] = dict(
            zip(("key", "calls", "succeeded", "denials", "failures", "rejections", "expirations"), r, strict=True)
        )
    latency_where = where.replace(" WHERE ", " AND ") if where else ""
    samples = db.execute(
        f"SELECT {key}, total_ms FROM intents WHERE total_ms IS NOT NULL{latency_where} ORDER BY {key}, total_ms",
        args,
    )
    for group, values in itertools.groupby(samples, key=lambda r: r[0]):
        ordered = [float(v[1]) for v in values]
        if group in out:
            out[group].update(
                ended=len(ordered),
                p50_ms=percentile(ordered, 0.50),
                p95_ms=percentile(ordered, 0.95),
                p99_ms=percentile(ordered, 0.99),
            )
    for row in out.values():
        row.setdefault("ended", 0)
        for name in ("p50_ms", "p95_ms", "p99_ms"):
            row.setdefault(name, None)
    return list(out.values())


# -- ad-hoc SQL ---------------------------------------------------------------------------------

_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_READ_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "user_version"}


SHADOW_COLUMNS = (
    "seq, intent_id, agent_id, tool, shadow_digest, enforced_digest, enforced_kind, shadow_kind,"
    " enforced_policy_ids, shadow_policy_ids, enforced_code, shadow_code, decided_at"
)


def shadow(
    db: sqlite3.Connection, *, digest: str | None = None, since: str | None = None, limit: int = 50
) -> dict[str, Any]:
    """The shadow bundles' record beside the enforced decisions: per shadow bundle, how many
    decisions agreed and how many did not (by enforced -> shadow kind), and the disagreements,
    newest first (``limit`` of them).

    Returns:
        ``{"bundles": [{shadow_digest, decisions, agreed, disagreed, first_at, last_at,
        changes: [{from, to, count}]}], "disagreements": [...]}``
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError("invalid_limit", f"limit must be between 1 and {MAX_LIMIT}")
    clauses, args = [], []
    if digest:
        clauses.append("shadow_digest = ?")
        args.append(digest)
    if since:
        clauses.append("decided_at >= ?")
        args.append(normalize_time(since, "since"))
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    bundles = [
        dict(r)
        for r in db.execute(
            "SELECT shadow_digest, COUNT(*) AS decisions, SUM(agrees) AS agreed, COUNT(*) - SUM(agrees) AS disagreed,"
            f" MIN(decided_at) AS first_at, MAX(decided_at) AS last_at FROM shadow_decisions{where}"
            " GROUP BY shadow_digest ORDER BY MAX(seq) DESC",
            args,
        )
    ]
    for bundle in bundles:
        bundle["changes"] = [
            dict(r)
            for r in db.execute(
                'SELECT enforced_kind AS "from", shadow_kind AS "to", COUNT(*) AS count FROM shadow_decisions'
                f"{where}{' AND' if where else ' WHERE'} shadow_digest = ? AND agrees = 0"
                " GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2",
                (*args, bundle["shadow_digest"]),
            )
        ]
    disagreements = [
        {**dict(r), **{k: json.loads(r[k]) for k in ("enforced_policy_ids", "shadow_policy_ids")}}
        for r in db.execute(
            f"SELECT {SHADOW_COLUMNS} FROM shadow_decisions{where}{' AND' if where else ' WHERE'} agrees = 0"
            " ORDER BY seq DESC LIMIT ?",
            (*args, limit),
        )
    ]
    return {"bundles": bundles, "disagreements": disagreements}


def run_sql(
    path: Path, sql: str, *, max_rows: int = SQL_MAX_ROWS, timeout: float = SQL_TIMEOUT_SECONDS
) -> dict[str, Any]:
    """Run one read-only statement on a read-only connection.

    Three locks: the file is opened ``mode=ro``, the connection is ``query_only``, and an authorizer
    allows nothing but reads (no ATTACH, no writes, no private tables). A statement running longer
    than ``timeout`` is interrupted.

    Raises:
        QueryError: ``read_only`` (a write), ``forbidden`` (a private table), ``query_timeout``,
            ``invalid_sql``.
    """
    db = open_reader(path)
    denied: list[Refusal] = []  # why the authorizer said no, first reason first

    def authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
        if action == sqlite3.SQLITE_READ and arg1 in PRIVATE_TABLES:
            denied.append(Refusal(code="forbidden", reason=f"table {arg1} is not readable here"))
            return sqlite3.SQLITE_DENY
        if action in _READ_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _READ_PRAGMAS and arg2 is None:
            return sqlite3.SQLITE_OK
        denied.append(READ_ONLY)
        return sqlite3.SQLITE_DENY

    deadline = time.monotonic() + timeout
    db.set_authorizer(authorize)
    db.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        cursor = db.execute(sql)
        columns = [d[0] for d in cursor.description or ()]
        fetched = cursor.fetchmany(max_rows + 1)
    except sqlite3.Error as exc:
        if denied:
            raise QueryError.of(denied[0]) from exc
        if "interrupted" in str(exc):
            raise QueryError("query_timeout", f"the query ran longer than {timeout:g}s and was stopped") from exc
        if "readonly" in str(exc) or "read-only" in str(exc):
            raise QueryError.of(READ_ONLY) from exc
        raise QueryError("invalid_sql", str(exc)) from exc
    except sqlite3.Warning as exc:  # "You can only execute one statement at a time."
        raise QueryError("invalid_sql", str(exc)) from exc
    finally:
        db.close()
    rows = [[_plain(v) for v in row] for row in fetched[:max_rows]]
    return {"columns": columns, "rows": rows, "truncated": len(fetched) > max_rows}


def _plain(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def rollouts(db: sqlite3.Connection, *, limit: int = 20) -> dict[str, Any]:
    """The canary rollouts, newest first: slice, triggers, how each ended and the signals that
    decided it, and the decisions made under the candidate meanwhile (by kind).

    Returns:
        ``{"rollouts": [{rollout_id, status, candidate_digest, previous_digest, percent, agents,
        triggers, started_at, ended_at, ended_by, trigger, reason, signals, candidate_decisions}]}``
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError("invalid_limit", f"limit must be between 1 and {MAX_LIMIT}")
    out = []
    for r in db.execute("SELECT * FROM rollouts ORDER BY seq DESC LIMIT ?", (limit,)):
        row = dict(r)
        row.update(json.loads(row.pop("slice")))
        row["triggers"] = json.loads(row["triggers"])
        row["signals"] = json.loads(row["signals"]) if row["signals"] else []
        ended = row["ended_at"] or "9999"
        row["candidate_decisions"] = dict(
            db.execute(
                "SELECT kind, COUNT(*) FROM decisions WHERE policy_digest = ? AND decided_at >= ? AND decided_at <= ?"
                " GROUP BY kind",
                (row["candidate_digest"], row["started_at"], ended),
            ).fetchall()
        )
        out.append(row)
    return {"rollouts": out}
