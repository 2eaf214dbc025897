"""The embedded runtime's servers: durable JetStream, a live Redis, a supervisor that restarts."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import nats
import pytest
import redis.asyncio
from nats.js.errors import APIError

from waiting import eventually_sync
from writ.runtime.processes import ManagedProcess, free_port, start_nats
from writ.runtime.supervisor import Plane
from writ_common import subjects
from writ_common.settings import WritSettings
from writ_common.streams import ensure_streams

pytestmark = pytest.mark.integration


def test_nats_runs_jetstream_with_fsync_on_every_write(nats_process: ManagedProcess) -> None:
    conf = Path(nats_process.argv[-1]).read_text()
    assert "sync_interval: always" in conf
    assert "listen: 127.0.0.1:" in conf
    assert nats_process.monitor_url is not None
    with urllib.request.urlopen(f"{nats_process.monitor_url}/varz", timeout=5) as response:
        varz = json.load(response)
    assert varz["jetstream"]["config"]["sync_always"] is True
    assert varz["host"] == "127.0.0.1"


async def test_redis_answers_ping_with_append_only_file(redis_server: str) -> None:
    client = redis.asyncio.from_url(redis_server)
    try:
        assert await client.ping() is True
        assert await client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        await client.aclose()


async def test_acked_message_survives_sigkill_and_restart_on_same_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = start_nats(store, monitor=False)
    try:
        nc = await nats.connect(first.url)
        js = nc.jetstream()
        await js.add_stream(name="RUNTIME_T", subjects=["runtime.t.>"])
        ack = await js.publish("runtime.t.1", b"kept")
        await nc.close()
    finally:
        first.kill()  # no graceful shutdown: only the fsync before the ack can save it

    second = start_nats(store, monitor=False)
    try:
        nc = await nats.connect(second.url)
        msg = await nc.jetstream().get_msg("RUNTIME_T", ack.seq)
        await nc.close()
    finally:
        second.stop()
    assert msg.data == b"kept"


async def test_streams_are_declared_with_the_configured_replicas(tmp_path: Path) -> None:
    server = start_nats(tmp_path / "store", monitor=False)
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        # WRIT_STREAM_REPLICAS reaches the server: a single node refuses three replicas outright,
        # and takes one.
        with pytest.raises(APIError, match=r"replicas > 1 not supported"):
            await ensure_streams(js, replicas=WritSettings(stream_replicas=3).stream_replicas)
        await ensure_streams(js, replicas=WritSettings().stream_replicas)
        info = await js.stream_info(subjects.INTENTS_STREAM)
        await nc.close()
    finally:
        server.stop()
    assert info.config.num_replicas == 1


def test_plane_restarts_a_killed_child_and_forgets_runtime_file_on_stop(tmp_path: Path) -> None:
    plane = Plane(tmp_path / "data", nats_port=free_port(), redis_port=free_port(), services=())
    plane.start()
    try:
        runtime = json.loads((plane.data_dir / "runtime.json").read_text())
        assert runtime["nats_url"] == plane.nats_url
        assert runtime["redis_url"] == plane.redis_url
        assert plane.settings.resolved_nats_url() == plane.nats_url

        killed = plane.kill_service("redis")
        eventually_sync(lambda: plane.pid("redis") not in (None, killed) or None, 10, "redis restarted", pause=0.05)
        assert {s.name: s.restarts for s in plane.status()} == {"nats": 0, "redis": 1}

        # runtime.json follows every change (the console's Plane page reads it).
        def units_now() -> dict[str, Any] | None:
            units: dict[str, Any] = json.loads((plane.data_dir / "runtime.json").read_text())["units"]
            return units if units["redis"]["pid"] == plane.pid("redis") else None

        units = eventually_sync(units_now, 5, "runtime.json names redis's new pid", pause=0.05)
        assert units["redis"]["state"] == "running" and units["redis"]["restarts"] == 1
        assert units["redis"]["last_exit"] == -9 and units["redis"]["running_since"]
    finally:
        plane.stop()
    assert not (plane.data_dir / "runtime.json").exists()
    assert all(s.state == "stopped" for s in plane.status())
