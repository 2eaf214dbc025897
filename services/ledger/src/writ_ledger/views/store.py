"""The views' SQLite file (WAL): positions per stream and rows, each batch in a savepoint of the
open transaction, committed per batch or (the live views) when the owner says."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

from writ_common import metrics
from writ_common.envelope import StoredEvent
from writ_ledger.views.project import apply_event
from writ_ledger.views.schema import DDL, SCHEMA_VERSION

log = logging.getLogger(__name__)

# The streams the views are projected from, in the order a rebuild replays them.
Batch = Iterable[tuple[int, StoredEvent | None]]
Applied = Callable[[str, int, StoredEvent | None], None]


class ViewStore:
    """The one writer of the views file. Idempotent by construction: the sequence applied per
    stream is stored in the same transaction as the rows, so a replayed event is a no-op.

    ``deferred``: batches stay in one open transaction until :meth:`commit` (the live views
    commit on a short timer and before anyone else reads the file). A commit costs more than
    projecting a call's events, so one per batch was most of the views' CPU at low load; what a
    crash loses of an open transaction is rows and their position together, applied again from
    the log."""

    def __init__(self, path: Path, on_applied: Applied | None = None, *, deferred: bool = False) -> None:
        self.path = path
        self.on_applied = on_applied  # told every (stream, seq, event) applied, in order
        self.deferred = deferred
        self._open = False  # a transaction is open (BEGIN IMMEDIATE) and holds applied batches
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = _open(path)
        if self.db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            # An older layout (or a new file): the views are derived, so start over from the log.
            self.db.close()
            for stale in (path, *sidecars(path)):
                stale.unlink(missing_ok=True)
            self.db = _open(path)
            self.db.executescript(DDL)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        # stream -> the position committed, as the file holds it: this is its one writer
        self._positions: dict[str, int] = {}

    def position(self, stream: str) -> int:
        known = self._positions.get(stream)
        if known is None:
            row = self.db.execute("SELECT seq FROM tracking WHERE stream = ?", (stream,)).fetchone()
            known = self._positions[stream] = int(row[0]) if row else 0
        return known

    def has_receipt(self, intent_id: str) -> bool:
        """A receipt of ``intent_id`` is among those applied (any ledger's key)."""
        return self.db.execute("SELECT 1 FROM receipts WHERE intent_id = ?", (intent_id,)).fetchone() is not None

    def positions(self) -> dict[str, tuple[int, str | None]]:
        """stream -> (last applied sequence, occurred_at of the last event applied)."""
        return {s: (int(q), at) for s, q, at in self.db.execute("SELECT stream, seq, event_at FROM tracking")}

    def apply(self, stream: str, batch: Batch) -> int:
        """Apply ``(seq, event)`` pairs of ``stream`` in order (event None: not a valid event, only
        advance). Sequences at or below the stored position are skipped. Returns how many applied."""
        applied = 0
        if not self._open:
            self.db.execute("BEGIN IMMEDIATE")
            self._open = True
        self.db.execute("SAVEPOINT batch")
        try:
            position = self.position(stream)
            last_at: str | None = None
            for seq, event in batch:
                if seq <= position:
                    continue
                if event is not None and self._apply_one(stream, seq, event):
                    last_at = event.envelope.occurred_at
                if self.on_applied is not None:
                    self.on_applied(stream, seq, event)
                position = seq
                applied += 1
            if applied:
                self.db.execute(
                    "INSERT INTO tracking(stream, seq, event_at) VALUES (?, ?, ?) ON CONFLICT(stream) DO UPDATE"
                    " SET seq = excluded.seq, event_at = COALESCE(excluded.event_at, tracking.event_at)",
                    (stream, position, last_at),
                )
        except BaseException:
            self.db.execute("ROLLBACK TO batch")  # this batch only: the ones before it stay
            self.db.execute("RELEASE batch")
            if not self.deferred:
                self.commit()
            raise
        self.db.execute("RELEASE batch")
        self._positions[stream] = position
        if not self.deferred:
            self.commit()
        return applied

    @property
    def uncommitted(self) -> bool:
        """Batches are applied that readers of the file do not see yet."""
        return self._open

    def commit(self) -> None:
        """Make every applied batch visible to readers (another connection) and keep it in the file.

        Raises:
            sqlite3.Error: the commit failed; nothing of the open transaction is kept, and the
                positions are read from the file again (the log gives the rows back).
        """
        if not self._open:
            return
        try:
            self.db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            self._positions.clear()
            raise
        finally:
            self._open = False

    def _apply_one(self, stream: str, seq: int, event: StoredEvent) -> bool:
        """Apply one event in its own savepoint: an event the projection cannot take is rolled back
        and moved past (the same on every rebuild), so it never stops the views."""
        self.db.execute("SAVEPOINT event")
        try:
            apply_event(self.db, stream, event)
        except Exception:
            self.db.execute("ROLLBACK TO event")
            self.db.execute("RELEASE event")
            metrics.SKIPPED_EVENTS.labels("views", "unappliable").inc()
            log.exception("views: %s:%d (%s) could not be projected; moving past it", stream, seq, event.type)
            return False
        self.db.execute("RELEASE event")
        return True

    def digest(self) -> str:
        """sha256 over every row of every table, in a fixed order: equal digests, identical views."""
        return combined_digest(self.table_digests())

    def table_digests(self) -> dict[str, str]:
        """Per table: which one two views differ in."""
        return table_digests(self.db)

    def snapshot(self, streams: Iterable[str]) -> dict[str, object]:
        """The digest, each table's, and the stream positions they cover."""
        tables = self.table_digests()
        return {
            "digest": combined_digest(tables),
            "tables": tables,
            "positions": {s: self.position(s) for s in streams},
        }

    def close(self) -> None:
        """Commit, checkpoint the WAL into the file and close (a closed store is one self-contained file)."""
        self.commit()
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()


def table_digests(db: sqlite3.Connection) -> dict[str, str]:
    out = {}
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    for table in tables:
        hasher = hashlib.sha256()
        columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
        order = ", ".join(f'"{c}"' for c in columns)
        hasher.update(json.dumps([table, columns]).encode())
        for row in db.execute(f'SELECT * FROM "{table}" ORDER BY {order}'):
            hasher.update(json.dumps(list(row)).encode())
        out[table] = "sha256:" + hasher.hexdigest()
    return out


def combined_digest(tables: dict[str, str]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(sorted(tables.items())).encode()).hexdigest()


def _open(path: Path) -> sqlite3.Connection:
    # The views hold arguments and results: readable by the plane's user only, like its keys.
    # SQLite gives the -wal and -shm files the database file's mode.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    path.chmod(0o600)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def sidecars(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")
