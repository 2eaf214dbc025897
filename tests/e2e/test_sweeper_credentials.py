"""The sweepers' index of open intents follows the log with the service's own bus credential on
the real, authenticated plane (an index that needed a consumer the service may not create timed
out here, forever, and nothing stranded was ever swept)."""

from __future__ import annotations

import asyncio

import nats
import pytest
from typer.testing import CliRunner

from cli_runner import INTENT_ID, time_agent
from writ.cli import app
from writ.runtime.supervisor import Plane
from writ_common import local
from writ_common.bus import read_history
from writ_common.sweeper import OpenIntents

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def swept(plane: Plane, time_server: str) -> tuple[str, str]:
    """The agent and the time server both services' cases submit with (each its own intent)."""
    return time_agent(plane, "swept"), time_server


@pytest.mark.parametrize("service", ["policy", "executor"])
def test_the_sweepers_index_reads_the_intents_with_the_services_own_credential(
    plane: Plane, swept: tuple[str, str], service: str
) -> None:
    agent, server = swept
    runner = CliRunner()
    env = {"WRIT_DATA_DIR": str(plane.data_dir), "WRIT_NATS_URL": plane.nats_url, "COLUMNS": "200"}
    submitted = runner.invoke(app, ["intent", "submit", f"{server}/get_current_time", "--as", agent], env=env)
    found = INTENT_ID.search(submitted.stdout)
    assert submitted.exit_code == 0 and found, submitted.output

    creds = plane.bus.creds_file(service)
    assert creds.is_file()

    async def follow() -> tuple[int, int]:
        nc = await nats.connect(plane.nats_url, allow_reconnect=False, **local.bus_credentials(creds, service))
        try:
            history = await read_history(nc, agent, found.group(1))
            index = OpenIntents()
            await index.catch_up(nc)
            return history.events[0].seq, index.position()
        finally:
            await nc.close()

    submitted_seq, position = asyncio.run(follow())
    assert position > submitted_seq  # it read past the intent's submission
