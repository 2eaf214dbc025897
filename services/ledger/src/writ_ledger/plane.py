"""What the console's Plane page shows, read from where the plane already keeps it.

- each process's state, pid and restarts: ``<data>/runtime.json`` as ``writ up``'s supervisor
  writes it at every change (absent when the services run under another supervisor);
- consumer lag: each service's durable consumer on the intents stream (JetStream consumer info);
- dead letters: ``WRIT_DLQ``'s count per service and its latest messages' reasons (headers);
- breakers: the last ``breaker.transitioned`` per tool server on the executor's stream;
- loop changes: the executor's own loops (per-server concurrency, per-route admission) over the
  last hour, each change and its verdict with old and new value and the reason;
- quarantine: the registry stream folded into the catalog registry and executor use, each pending
  definition beside the accepted one as a unified diff;
- rate limits: policy's sliding windows in Redis (``writ:rate:<permit>:<agent>:<tool>``), read only.

The pure functions shape rows; :class:`PlaneReader` does the reading.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError
from redis.exceptions import RedisError

from writ_common import events as ev
from writ_common import subjects
from writ_common.bus import direct_get_batch, stored
from writ_common.busauth import durable_of
from writ_common.catalog import Catalog
from writ_common.control import ControlFollower
from writ_common.envelope import StoredEvent, UndecodableEvent, decode
from writ_common.settings import WritSettings
from writ_common.topology import CONTROL_PREFIX_BY_SERVICE

log = logging.getLogger(__name__)

SERVICES = tuple(CONTROL_PREFIX_BY_SERVICE)  # the five services, each with one durable consumer
DEAD_LETTERS_SHOWN = 5
LOOP_CHANGES_SHOWN = 20
LOOP_CHANGES_SINCE = timedelta(hours=1)
LOOP_EVENTS = (
    ev.ConcurrencyAdjusted,
    ev.ConcurrencyVerified,
    ev.ConcurrencyReverted,
    ev.AdmissionAdjusted,
    ev.AdmissionVerified,
    ev.AdmissionReverted,
)
RATE_WINDOWS_SHOWN = 50
RATE_PREFIX = "writ:rate:"
READ_TIMEOUT = 2.0


# -- shaping (pure) --------------------------------------------------------------------------------


def processes(runtime: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The supervised processes of ``runtime.json`` (``units``), nats and redis first; [] if none."""
    units = (runtime or {}).get("units")
    if not isinstance(units, dict):
        return []
    rows = []
    for name, unit in units.items():
        if not isinstance(unit, dict):
            continue
        rows.append(
            {
                "name": str(name),
                "state": str(unit.get("state", "unknown")),
                "pid": unit.get("pid") if isinstance(unit.get("pid"), int) else None,
                "restarts": int(unit.get("restarts") or 0),
                "last_exit": unit.get("last_exit") if isinstance(unit.get("last_exit"), int) else None,
                "running_since": unit.get("running_since") if isinstance(unit.get("running_since"), str) else None,
            }
        )
    return rows


def _definition_text(tool: ev.ToolDefinition | None) -> list[str]:
    if tool is None:
        return []
    shown = tool.listed if tool.listed is not None else msgspec.to_builtins(tool)
    return json.dumps(shown, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def definition_diff(server: str, accepted: ev.ToolDefinition | None, pending: ev.ToolDefinition) -> str:
    """A unified diff from the accepted definition (none: a new tool) to the one in quarantine."""
    name = f"{server}/{pending.name}"
    before = f"{name} accepted {accepted.tool_digest[7:19]}" if accepted is not None else "(no accepted version)"
    after = f"{name} pending {pending.tool_digest[7:19]}"
    lines = difflib.unified_diff(_definition_text(accepted), _definition_text(pending), before, after, lineterm="")
    return "\n".join(lines)


def quarantined(catalog: Catalog) -> list[dict[str, Any]]:
    """Every tool version waiting for ``writ tool accept SERVER/TOOL``, with its diff."""
    rows = []
    for server in sorted(catalog.quarantined):
        for name, pending in sorted(catalog.quarantined[server].items()):
            accepted = catalog.tools.get(server, {}).get(name)
            rows.append(
                {
                    "tool": f"{server}/{name}",
                    "pending_digest": pending.tool_digest,
                    "accepted_digest": accepted.tool_digest if accepted is not None else None,
                    "accept": f"writ tool accept {server}/{name}",
                    "diff": definition_diff(server, accepted, pending),
                }
            )
    return rows


def dead_letter(seq: int, time: datetime | None, headers: Mapping[str, str]) -> dict[str, Any]:
    """One parked message as the page lists it: who parked it, why, and where it came from."""
    return {
        "seq": seq,
        "at": time.isoformat() if time else headers.get("Nats-Time-Stamp"),
        "service": headers.get("Writ-Dead-Letter-Service", ""),
        "code": headers.get("Writ-Dead-Letter-Code", ""),
        "reason": headers.get("Writ-Dead-Letter-Reason", ""),
        "subject": headers.get("Writ-Original-Subject", ""),
        "origin": headers.get("Writ-Original-Origin", ""),
    }


def loop_change(event: StoredEvent) -> dict[str, Any] | None:
    """One step of the executor's loops as the page lists it; None for any other event."""
    payload = event.payload
    if not isinstance(payload, LOOP_EVENTS):
        return None
    row: dict[str, Any] = {"at": event.envelope.occurred_at, "step": event.envelope.type.rpartition("_")[2]}
    match payload:
        case ev.ConcurrencyAdjusted() as p:
            row |= {"loop": "concurrency", "of": p.server, "from": p.old_limit, "to": p.new_limit}
        case ev.ConcurrencyVerified() as p:
            row |= {"loop": "concurrency", "of": p.server, "from": p.limit, "to": p.limit}
        case ev.ConcurrencyReverted() as p:
            row |= {"loop": "concurrency", "of": p.server, "from": p.from_limit, "to": p.to_limit}
        case ev.AdmissionAdjusted() as p:
            row |= {"loop": "admission", "of": f"{p.server}/{p.tool}", "from": p.old_limit, "to": p.new_limit}
        case ev.AdmissionVerified() as p:
            row |= {"loop": "admission", "of": f"{p.server}/{p.tool}", "from": p.limit, "to": p.limit}
        case ev.AdmissionReverted() as p:
            row |= {"loop": "admission", "of": f"{p.server}/{p.tool}", "from": p.from_limit, "to": p.to_limit}
    return row | {"reason": payload.reason}


def rate_window(key: str, count: int, oldest_ms: float | None, ttl_ms: int, now_ms: float) -> dict[str, Any] | None:
    """One sliding window (``writ:rate:<permit>:<agent>:<tool>``); None for a key of another shape."""
    if not key.startswith(RATE_PREFIX):
        return None
    parts = key[len(RATE_PREFIX) :].rsplit(":", 2)
    if len(parts) != 3:
        return None
    permit, agent, tool = parts
    return {
        "permit": permit,
        "agent": agent,
        "tool": tool,
        "calls": count,
        "oldest_s": round((now_ms - oldest_ms) / 1000, 1) if oldest_ms is not None else None,
        "empties_in_s": round(ttl_ms / 1000, 1) if ttl_ms >= 0 else None,
    }


# -- reading --------------------------------------------------------------------------------------


class PlaneReader:
    """Reads the Plane page's snapshot; follows the registry stream for the quarantine."""

    def __init__(self, nc: Client, settings: WritSettings) -> None:
        self._nc = nc
        self._settings = settings
        self._catalog = Catalog()
        self._registry = ControlFollower(subjects.REGISTRY_STREAM, self._catalog.apply)
        self._redis: aioredis.Redis | None = None

    async def start(self) -> None:
        await self._registry.start(self._nc)
        try:
            self._redis = aioredis.from_url(
                self._settings.resolved_redis_url(),
                **self._settings.redis_options(),
                socket_timeout=READ_TIMEOUT,
                socket_connect_timeout=READ_TIMEOUT,
            )
        except (RedisError, OSError, ValueError) as exc:  # no Redis configured: the page says so
            log.warning("plane page: no rate-limit store: %s", exc)

    async def stop(self) -> None:
        await self._registry.stop()
        if self._redis is not None:
            await self._redis.aclose()

    async def read(self) -> dict[str, Any]:
        """The whole snapshot; a part that cannot be read says why instead of failing the rest."""
        parts = await asyncio.gather(
            self._consumers(),
            self._dead_letters(),
            self._breakers(),
            self._loop_changes(),
            self._rate_windows(),
            return_exceptions=True,
        )
        consumers, dead, breakers, loops, rates = (_or_problem(p) for p in parts)
        runtime = _read_json(self._settings.runtime_file())
        return {
            "supervisor": {
                "pid": runtime.get("pid") if runtime else None,
                "started_at": runtime.get("started_at") if runtime else None,
                "note": None if runtime else "no runtime.json: these services are not supervised by `writ up`",
            },
            "processes": processes(runtime),
            "consumers": consumers,
            "dead_letters": dead,
            "breakers": breakers,
            "loop_changes": loops,
            "quarantined": quarantined(self._catalog),
            "rate_limits": rates,
        }

    async def _consumers(self) -> list[dict[str, Any]]:
        js = self._nc.jetstream()
        rows: list[dict[str, Any]] = []
        for service in SERVICES:
            try:
                info = await js.consumer_info(subjects.INTENTS_STREAM, durable_of(service), timeout=READ_TIMEOUT)
            except NotFoundError:
                rows.append({"service": service, "consumer": durable_of(service), "problem": "no such consumer"})
                continue
            except (NatsError, TimeoutError) as exc:
                problem = str(exc) or "unreadable"
                if isinstance(exc, TimeoutError):  # nats-py's timeout is one too
                    # On a cluster a stage's consumer lives on one node (WRIT_CONSUMER_REPLICAS=1):
                    # no answer most likely means that node is down, and the stage waits for it.
                    problem = (
                        f"no answer within {READ_TIMEOUT:g}s: on a cluster, the node holding it may be down"
                        " (the stage waits for it; a node lost for good: `writ bus remove-node NAME`)"
                    )
                rows.append({"service": service, "consumer": durable_of(service), "problem": problem})
                continue
            rows.append(
                {
                    "service": service,
                    "consumer": durable_of(service),
                    "node": info.cluster.leader if info.cluster else None,
                    "pending": info.num_pending or 0,
                    "ack_pending": info.num_ack_pending or 0,
                    "redelivered": info.num_redelivered or 0,
                    "delivered_seq": info.delivered.stream_seq if info.delivered else None,
                    "problem": None,
                }
            )
        return rows

    async def _dead_letters(self) -> dict[str, Any]:
        js = self._nc.jetstream()
        info = await js.stream_info(subjects.DLQ_STREAM, subjects_filter=subjects.dlq_subject(">"))
        per_service = {subject.rsplit(".", 1)[-1]: count for subject, count in (info.state.subjects or {}).items()}
        latest: list[dict[str, Any]] = []
        seq = info.state.last_seq or 0
        while seq >= (info.state.first_seq or 1) and seq > 0 and len(latest) < DEAD_LETTERS_SHOWN:
            try:
                msg = await js.get_msg(subjects.DLQ_STREAM, seq, direct=True)
            except NotFoundError:  # deleted, or past a limit
                seq -= 1
                continue
            latest.append(dead_letter(seq, msg.time, dict(msg.headers or {})))
            seq -= 1
        return {"total": info.state.messages, "per_service": per_service, "latest": latest}

    async def _breakers(self) -> list[dict[str, Any]]:
        js = self._nc.jetstream()
        info = await js.stream_info(subjects.EXECUTOR_STREAM, subjects_filter=subjects.breaker_subject("*"))
        rows = []
        for subject in sorted(info.state.subjects or {}):
            try:
                msg = await js.get_last_msg(subjects.EXECUTOR_STREAM, subject, direct=True)
                event = decode(msg.data or b"", seq=msg.seq or 0, subject=msg.subject or subject)
            except (NotFoundError, UndecodableEvent):
                continue
            if isinstance(event.payload, ev.BreakerTransitioned):
                p = event.payload
                rows.append(
                    {
                        "server": p.server,
                        "state": p.to_state,
                        "since": event.envelope.occurred_at,
                        "reason": p.reason,
                        "consecutive_failures": p.consecutive_failures,
                    }
                )
        return rows

    async def _loop_changes(self) -> list[dict[str, Any]]:
        """The last hour's steps of both loops, newest first."""
        since = datetime.now(UTC) - LOOP_CHANGES_SINCE
        rows = []
        for where in (subjects.limit_subject("*", "*"), subjects.admission_subject("*", "*")):
            for msg in await direct_get_batch(self._nc, subjects.EXECUTOR_STREAM, where, start_time=since):
                try:
                    row = loop_change(stored(msg))
                except UndecodableEvent:
                    continue
                if row is not None:
                    rows.append(row)
        return sorted(rows, key=lambda r: str(r["at"]), reverse=True)[:LOOP_CHANGES_SHOWN]

    async def _rate_windows(self) -> dict[str, Any]:
        if self._redis is None:
            return {"windows": [], "problem": "no rate-limit store configured"}
        windows = []
        seconds, micros = await self._redis.time()
        now_ms = seconds * 1000 + micros / 1000
        async for raw in self._redis.scan_iter(match=RATE_PREFIX + "*", count=200):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zcard(key)
                pipe.zrange(key, 0, 0, withscores=True)
                pipe.pttl(key)
                count, oldest, ttl = await pipe.execute()
            row = rate_window(key, int(count), float(oldest[0][1]) if oldest else None, int(ttl), now_ms)
            if row is not None and row["calls"]:
                windows.append(row)
            if len(windows) >= RATE_WINDOWS_SHOWN:
                break
        return {"windows": sorted(windows, key=lambda w: (-w["calls"], w["permit"], w["agent"])), "problem": None}


def _or_problem(part: Any) -> Any:
    if isinstance(part, BaseException):
        return {"problem": f"{type(part).__name__}: {part}"}
    return part


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
