"""Keeping the views up to date with the log: follow four streams, measure the lag, rebuild.

Reads are gap-free Direct Gets from the position each stream has in the views file, so the views
are exact across restarts and server failovers; the ledger's intent consumer, its own receipts and
core subscriptions on the identity and registry streams only say "read now", and a one-second poll
covers the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.aio.subscription import Subscription

from writ_common import metrics, subjects
from writ_common.bus import direct_get_batch, pages_after, stored
from writ_common.envelope import StoredEvent, UndecodableEvent, decode, parse_time
from writ_common.sse import Pulse
from writ_ledger.views.queries import QueryError, open_reader
from writ_ledger.views.store import Applied, ViewStore, sidecars

log = logging.getLogger(__name__)

T = TypeVar("T")

# stream -> the subjects the views read from it
STREAMS: dict[str, str] = {
    subjects.INTENTS_STREAM: "writ.intent.>",
    subjects.IDENTITY_STREAM: "writ.identity.>",
    subjects.REGISTRY_STREAM: "writ.registry.>",
    subjects.LEDGER_STREAM: subjects.RECEIPTS_FILTER,
    subjects.POLICY_STREAM: "writ.policy.>",  # the canary rollouts (the bundles themselves are skipped)
}
PAGE = 2048
POLL_SECONDS = 1.0
# The live views commit this long after the first batch a reader of the file does not see yet
# (and at once before a read through them): one commit for many calls' events under load.
COMMIT_AFTER_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class Lag:
    stream: str
    position: int
    head: int
    events_behind: int
    seconds_behind: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "position": self.position,
            "head": self.head,
            "events_behind": self.events_behind,
            "seconds_behind": self.seconds_behind,
        }


class ViewsInUse(RuntimeError):
    """Another process already writes this views file."""


class Views:
    """The ledger's views: one writer (this object), any number of read-only readers.

    One writer per file is enforced with an exclusive lock on ``<file>.lock``: a second process
    opening the file would recreate or swap it under the first and corrupt it (each ledger
    replica keeps its own file; ``WRIT_VIEWS_FILE``).

    Raises:
        ViewsInUse: another process holds the file.
    """

    def __init__(self, path: Path, on_applied: Applied | None = None) -> None:
        self.path = path
        self._on_applied = on_applied  # told every event the live views apply, in stream order
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = path.with_name(path.name + ".lock")
        self._writer_lock = os.fdopen(os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+")
        os.fchmod(self._writer_lock.fileno(), 0o600)
        try:
            fcntl.flock(self._writer_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._writer_lock.seek(0)
            holder = self._writer_lock.read().strip() or "another process"
            self._writer_lock.close()
            raise ViewsInUse(
                f"{path} is already kept by {holder}; give each ledger process its own views file (WRIT_VIEWS_FILE)"
            ) from None
        self._writer_lock.truncate(0)
        self._writer_lock.write(f"pid {os.getpid()}\n")
        self._writer_lock.flush()
        self.store = ViewStore(path, on_applied, deferred=True)
        self._commit_timer: asyncio.TimerHandle | None = None
        self._nc: Client | None = None
        self._lock = asyncio.Lock()
        self._rebuilding = False
        self._subs: list[Subscription] = []
        self._poller: asyncio.Task[None] | None = None
        # Beats after events are applied: the console's live streams read again then.
        self.pulse = Pulse()

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "start() the views first"
        return self._nc

    async def start(self, nc: Client, *, follow: bool = True) -> None:
        """Catch up with every stream, then follow them (``follow=False``: only connect)."""
        self._nc = nc
        if not follow:
            return
        for stream in STREAMS:
            await self.catch_up(stream)
        # Receipts are not nudged: the ledger applies its own as it writes them (apply_live), and
        # the poll brings another replica's.
        for stream in (subjects.IDENTITY_STREAM, subjects.REGISTRY_STREAM, subjects.POLICY_STREAM):
            self._subs.append(await nc.subscribe(STREAMS[stream], cb=self._nudger(stream)))
        self._poller = asyncio.create_task(self._poll(), name="views-poll")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._commit_timer is not None:
            self._commit_timer.cancel()
            self._commit_timer = None
        self.store.close()
        self.release()

    def release(self) -> None:
        """Let another writer have the file (closing the lock file drops the lock)."""
        self._writer_lock.close()

    def no_receipt_until(self, intent_id: str, seq: int) -> bool:
        """The views applied the ledger stream exactly up to ``seq`` and hold no receipt of
        ``intent_id``: none is stored up to there (they apply the stream without gaps). False
        says nothing either way (behind, ahead, or one is there: look in the stream)."""
        store = self.store
        return store.position(subjects.LEDGER_STREAM) == seq and not store.has_receipt(intent_id)

    # -- following ----------------------------------------------------------------------------

    async def apply_live(self, stream: str, event: StoredEvent) -> None:
        """An event just consumed: applied at once when it is the next one, else read up to it."""
        async with self._lock:
            position = self.store.position(stream)
            if event.seq == position + 1:
                self.store.apply(stream, [(event.seq, event)])
                self._commit_soon()
                self.pulse.beat()
            elif event.seq > position:
                await self._catch_up(stream, self.store)

    async def apply_live_batch(self, stream: str, events: list[StoredEvent]) -> None:
        """Events just consumed, in stream order: the run that follows the position is applied in
        one transaction (a WAL commit per batch, not per event); after a gap, read up to it."""
        async with self._lock:
            position = self.store.position(stream)
            run = [(e.seq, e) for e in events if e.seq > position]
            if not run:
                return
            if run[0][0] != position + 1 or any(b[0] != a[0] + 1 for a, b in itertools.pairwise(run)):
                await self._catch_up(stream, self.store)  # a gap (e.g. an invalid event): from the log
                return
            self.store.apply(stream, run)
            self._commit_soon()
            self.pulse.beat()

    async def catch_up(self, stream: str) -> int:
        async with self._lock:
            return await self._catch_up(stream, self.store)

    async def _catch_up(self, stream: str, store: ViewStore) -> int:
        applied = 0
        async for msgs in pages_after(self.nc, stream, STREAMS[stream], store.position(stream), page=PAGE):
            applied += store.apply(stream, [_decoded(stream, m) for m in msgs])
            if store is self.store:
                self._commit_soon()
            self.pulse.beat()
        return applied

    # -- committing ---------------------------------------------------------------------------

    def _commit_soon(self) -> None:
        if self._commit_timer is None and self.store.uncommitted:
            self._commit_timer = asyncio.get_running_loop().call_later(COMMIT_AFTER_SECONDS, self.commit)

    def commit(self) -> None:
        """What the live views applied, visible to every reader of the file. Safe between any two
        awaits: the open transaction always holds whole batches with their positions."""
        if self._commit_timer is not None:
            self._commit_timer.cancel()
            self._commit_timer = None
        try:
            self.store.commit()
        except sqlite3.Error:
            log.exception("views: a commit failed; the rows are applied again from the log")

    async def snapshot(self) -> dict[str, Any]:
        """Catch every stream up to its head, then the digest of the tables and the positions it
        covers, read under the one lock: two snapshots at the same positions must have one digest."""
        async with self._lock:
            for stream in STREAMS:
                await self._catch_up(stream, self.store)
            return self.store.snapshot(STREAMS)

    def _nudger(self, stream: str) -> Callable[[Any], Any]:
        async def nudge(_msg: Any) -> None:
            with contextlib.suppress(Exception):
                await self.catch_up(stream)

        return nudge

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                for stream in STREAMS:
                    await self.catch_up(stream)
                await self.lag()
            except Exception as exc:  # the server may be restarting; the next poll retries
                log.debug("views poll: %s", exc)

    # -- lag ----------------------------------------------------------------------------------

    async def lag(self) -> list[Lag]:
        """Per stream: position, head, events behind, and the age of the oldest unapplied event.
        Also sets the ``writ_view_lag_*`` gauges."""
        js = self.nc.jetstream()
        out = []
        sizes = []
        for stream in STREAMS:
            info = await js.stream_info(stream)
            head = info.state.last_seq
            sizes.append((stream, info.state.bytes, info.config.max_bytes or 0))
            position = self.store.position(stream)
            behind = max(0, head - position)
            seconds = 0.0
            if behind:
                seconds = await self._age_of_next(stream, position)
            out.append(Lag(stream, position, head, behind, seconds))
        # All gauges at once, after the last await: they show one moment, not a mix of two.
        for lag in out:
            metrics.VIEW_LAG_EVENTS.labels(lag.stream).set(lag.events_behind)
            metrics.VIEW_LAG_SECONDS.labels(lag.stream).set(lag.seconds_behind)
        for stream, used, limit in sizes:
            metrics.STREAM_BYTES.labels(stream).set(used)
            metrics.STREAM_LIMIT_BYTES.labels(stream).set(max(0, limit))
        return out

    async def _age_of_next(self, stream: str, position: int) -> float:
        msgs = await direct_get_batch(self.nc, stream, ">", start_seq=position + 1, batch=1, limit=1)
        if not msgs:
            return 0.0
        try:
            at = parse_time(decode(msgs[0].data).envelope.occurred_at)
        except (UndecodableEvent, ValueError):
            return 0.0
        return round(max(0.0, (datetime.now(UTC) - at).total_seconds()), 3)

    # -- rebuild ------------------------------------------------------------------------------

    async def rebuild(self) -> dict[str, Any]:
        """Replay every stream from its first event into a fresh file, then swap it in atomically.

        The bulk is replayed while the live views keep serving; the last few events are replayed
        under the lock, so nothing is applied to the old file that the new one misses.

        Raises:
            QueryError: ``busy`` when a rebuild is already running.
        """
        if self._rebuilding:
            raise QueryError("busy", "a rebuild is already running")
        self._rebuilding = True
        fresh_path = self.path.with_name(self.path.name + ".rebuild")
        try:
            for stale in (fresh_path, *sidecars(fresh_path)):
                stale.unlink(missing_ok=True)
            started = time.perf_counter()
            fresh = ViewStore(fresh_path)
            events = 0
            for stream in STREAMS:
                events += await self._catch_up(stream, fresh)
            async with self._lock:
                for stream in STREAMS:
                    events += await self._catch_up(stream, fresh)
                fresh.close()
                self.commit()
                self.store.close()
                os.replace(fresh_path, self.path)
                for stale in sidecars(self.path):
                    stale.unlink(missing_ok=True)
                self.store = ViewStore(self.path, self._on_applied, deferred=True)
                # Under the lock: the digest covers exactly these positions.
                covered = self.store.snapshot(STREAMS)
            seconds = time.perf_counter() - started
        finally:
            self._rebuilding = False
        log.info("views rebuilt from %d events in %.2fs", events, seconds)
        return {
            "events": events,
            "seconds": round(seconds, 3),
            "events_per_second": round(events / seconds, 1) if seconds else None,
            **covered,
        }

    # -- reading ------------------------------------------------------------------------------

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(db, ...)`` on a fresh read-only connection in a worker thread, after committing
        what was applied: whoever heard of an event (a receipt notice, a pulse) reads it."""
        self.commit()

        def run() -> T:
            db = open_reader(self.path)
            try:
                return fn(db, *args, **kwargs)
            finally:
                db.close()

        return await asyncio.to_thread(run)


def _decoded(stream: str, msg: Any) -> tuple[int, StoredEvent | None]:
    seq = int((msg.headers or {})["Nats-Sequence"])
    try:
        event = stored(msg)  # admitted by the topology: a forged event never reaches the views
    except UndecodableEvent:
        return seq, None  # dead-lettered by the consumers; the views only move past it
    except Exception:
        metrics.SKIPPED_EVENTS.labels("views", "unreadable").inc()
        log.exception("views: %s:%d cannot be read; moving past it", stream, seq)
        return seq, None
    return seq, event
