"""Running the `writ` CLI in-process against the session's plane, for every e2e module."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from writ.cli import app
from writ.runtime.supervisor import Plane

Writ = Callable[..., Result]

TIME_SERVER = str(Path(sys.executable).parent / "mcp-server-time")
# The first line `writ intent submit` prints.
INTENT_ID = re.compile(r"^intent (in-[a-z2-7]+)$", re.MULTILINE)


def cli(plane: Plane) -> Writ:
    """`writ ARGS...` run in-process against ``plane`` (for module-scoped fixtures too)."""
    runner = CliRunner()
    env = {"WRIT_DATA_DIR": str(plane.data_dir), "WRIT_NATS_URL": plane.nats_url, "COLUMNS": "200"}

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), env=env)

    return invoke


@pytest.fixture
def writ(plane: Plane) -> Writ:
    """Run `writ ARGS...` in-process against the session plane."""
    return cli(plane)


def time_agent(plane: Plane, prefix: str) -> str:
    """The default policy and a fresh agent on the session plane, by the CLI, to call the session's
    ``time_server`` (tests/conftest.py); returns the agent id."""
    import uuid

    runner = CliRunner()
    env = {"WRIT_DATA_DIR": str(plane.data_dir), "WRIT_NATS_URL": plane.nats_url, "COLUMNS": "200"}
    agent = f"{prefix}-{uuid.uuid4().hex[:8]}"
    for args in (
        ["policy", "load", "--default"],
        ["agent", "register", agent, "--owner", "tests"],
    ):
        done = runner.invoke(app, args, env=env)
        assert done.exit_code == 0, done.output
    return agent
