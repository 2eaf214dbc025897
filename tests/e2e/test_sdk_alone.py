"""An agent installs the SDK alone: `writ-contract` and `writ-sdk` into a fresh venv, nothing of the
service kit, the web stack or the CLI; from there it registers nothing, but signs, submits, waits for
its receipt on the session plane and verifies the receipt offline with the contract alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cli_runner import time_agent
from writ.runtime.supervisor import Plane

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".venv-tools" / "bin" / "uv"

AGENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, importlib.util, json, sys
    from pathlib import Path

    from writ.sdk import WritAgent
    from writ_common.receipts import verify_receipt

    # Nothing of the plane came along.
    absent = [m for m in ("faststream", "pydantic", "starlette", "typer", "writ_common.service", "writ.cli")
              if importlib.util.find_spec(m.split(".")[0]) is not None and importlib.util.find_spec(m) is not None]

    async def main() -> None:
        agent_id, tool, data_dir = sys.argv[1:4]
        agent = await WritAgent.local(agent_id, data_dir)
        try:
            receipt = await agent.call(tool, {"timezone": "UTC"}, timeout=60)
        finally:
            await agent.close()
        public_key = (Path(data_dir) / "ledger" / "ledger.pub").read_text().strip()
        verify_receipt(receipt, public_key)  # raises on a bad hash or signature
        print(json.dumps({"present": absent, "status": receipt.status, "verified": True}))

    asyncio.run(main())
    """
)


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not UV.exists():
        pytest.skip(f"{UV} is missing: run `make venv` first")
    venv = tmp_path_factory.mktemp("sdk-venv") / "venv"
    subprocess.run([str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(UV), "pip", "install", "--quiet", "--python", str(python), str(ROOT / "libs" / "contract"), str(ROOT / "sdk")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    return python


def test_the_sdk_installs_alone_and_an_agent_gets_a_verified_receipt(
    plane: Plane, sdk_venv: Path, time_server: str
) -> None:
    listed = subprocess.run(
        [str(sdk_venv), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=False
    )
    names = {row["name"] for row in json.loads(listed.stdout)} if listed.returncode == 0 else set()
    assert not names & {"faststream", "pydantic", "writ-common", "writ"}, names

    agent, server = time_agent(plane, "alone"), time_server

    script = sdk_venv.parent / "agent.py"
    script.write_text(AGENT_SCRIPT)
    ran = subprocess.run(
        [str(sdk_venv), str(script), agent, f"{server}/get_current_time", str(plane.data_dir)],
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"WRIT_NATS_URL": plane.nats_url},
        capture_output=True, text=True, timeout=120, check=False, cwd=sdk_venv.parent,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    outcome = json.loads(ran.stdout.strip().splitlines()[-1])
    assert outcome == {"present": [], "status": "succeeded", "verified": True}
