"""A clean stop always ends, against a real nats-server: a shutdown step that hangs (a tool server
that never lets go of its session, a store that never answers) is logged and left behind, and
the steps after it still run."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from writ_common import service as service_module
from writ_common.service import Service
from writ_common.settings import WritSettings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_a_hanging_shutdown_hook_is_left_behind_and_the_stop_ends(
    nats_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(service_module, "STOP_STEP_TIMEOUT", 0.5)
    svc = Service("registry", WritSettings(data_dir=tmp_path, nats_url=nats_server, instance="stop-test"))
    after: list[str] = []
    release = asyncio.Event()

    async def never_lets_go() -> None:
        while not release.is_set():  # ignores cancellation, as a transport stuck in a shielded shutdown does
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    async def next_hook() -> None:
        after.append("ran")

    svc.on_shutdown(never_lets_go)
    svc.on_shutdown(next_hook)
    await svc.start()
    began = time.monotonic()
    try:
        with caplog.at_level(logging.ERROR, logger="writ_common.service"):
            await asyncio.wait_for(svc.stop(), 10)
        took = time.monotonic() - began
    finally:
        release.set()  # this test's own leftover ends
    assert took < 5
    assert after == ["ran"]  # the hooks after the hung one still ran
    assert any("did not finish within 0.5s" in r.getMessage() for r in caplog.records)
