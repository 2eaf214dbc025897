"""The intent-status view in SQLite (WAL). Idempotent by construction: the stream sequence applied
is stored in the same transaction as the rows it changed, so a replayed event is a no-op."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from writ_common import events as ev
from writ_common.digest import sha256_digest
from writ_common.envelope import StoredEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS intents (
    intent_id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    tool TEXT,
    server TEXT,
    status TEXT NOT NULL,
    code TEXT,
    reason TEXT,
    submitted_at TEXT,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS intents_by_status ON intents(status);
CREATE TABLE IF NOT EXISTS tracking (view TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""

_STATUS = {
    "intent.submitted": "submitted",
    "intent.authenticated": "authenticated",
    "intent.planned": "planned",
    "intent.authorized": "authorized",
    "approval.requested": "awaiting_approval",
    "execution.started": "executing",
    "intent.rejected": "rejected",
    "intent.denied": "denied",
    "intent.expired": "expired",
    "execution.succeeded": "succeeded",
    "execution.failed": "failed",
    "execution.outcome_unknown": "outcome_unknown",
    "execution.reconciled": "reconciled",
}
_FINAL = {"rejected", "denied", "expired", "succeeded", "failed", "outcome_unknown"}


class Projection:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def position(self, view: str = "intents") -> int:
        row = self._db.execute("SELECT seq FROM tracking WHERE view = ?", (view,)).fetchone()
        return int(row["seq"]) if row else 0

    def apply(self, seq: int, event: StoredEvent | None) -> None:
        """Apply the event at stream sequence ``seq`` (None: not a valid event, only advance).

        Callers apply in stream order; an already applied sequence is a no-op.
        """
        with self._tx():
            if seq <= self.position():
                return
            if event is not None:
                status = _STATUS.get(event.type)
                if status is not None and event.envelope.intent_id and event.envelope.agent_id:
                    self._apply_status(event, status)
            self._db.execute(
                "INSERT INTO tracking(view, seq) VALUES('intents', ?) ON CONFLICT(view) DO UPDATE SET seq = excluded.seq",
                (seq,),
            )

    def _apply_status(self, event: StoredEvent, status: str) -> None:
        env, p = event.envelope, event.payload
        if isinstance(p, ev.IntentSubmitted):
            self._db.execute(
                "INSERT OR IGNORE INTO intents(intent_id, agent_id, tool, status, submitted_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (env.intent_id, env.agent_id, p.tool, status, env.occurred_at, env.occurred_at),
            )
            return
        if isinstance(p, ev.ExecutionReconciled):
            # A person's word on an unknown outcome: the one change allowed after the end.
            settled = {"succeeded": "reconciled_succeeded", "failed": "reconciled_failed", "retry": "retried"}
            self._db.execute(
                "UPDATE intents SET status = ?, code = ?, reason = ?, updated_at = ?"
                " WHERE intent_id = ? AND status = 'outcome_unknown'",
                (
                    settled[p.outcome],
                    "reconciled",
                    f"reconciled by {p.by}: {p.outcome}"
                    + (f" as {p.retry_intent_id}" if p.retry_intent_id else "")
                    + (f" ({p.note})" if p.note else ""),
                    env.occurred_at,
                    env.intent_id,
                ),
            )
            return
        code = getattr(p, "code", None)
        reason = getattr(p, "reason", None)
        server = p.server if isinstance(p, ev.IntentPlanned) else None
        self._db.execute(
            "UPDATE intents SET status = ?, code = COALESCE(?, code), reason = COALESCE(?, reason),"
            " server = COALESCE(?, server), updated_at = ?"
            f" WHERE intent_id = ? AND status NOT IN ({','.join('?' * len(_FINAL))})",
            (status, code, reason, server, env.occurred_at, env.intent_id, *_FINAL),
        )

    def digest(self) -> str:
        """sha256 over every row in key order: equal digests mean identical views (rebuild check)."""
        rows = [list(r) for r in self._db.execute("SELECT * FROM intents ORDER BY intent_id")]
        return sha256_digest(rows)

    def intent(self, intent_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM intents WHERE intent_id = ?", (intent_id,)).fetchone()
        return dict(row) if row else None

    def intents(self, *, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        sql = "SELECT * FROM intents"
        args: tuple[Any, ...] = ()
        if status:
            sql += " WHERE status = ?"
            args = (status,)
        sql += " ORDER BY updated_at DESC LIMIT ?"
        return [dict(r) for r in self._db.execute(sql, (*args, limit))]

    def close(self) -> None:
        self._db.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
