"""Every program in examples/ runs as its docstring says, against the session plane: a plain SDK
agent, an MCP client through `writ gateway`, an automated approver service, an analyst's script."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from cli_runner import TIME_SERVER, Writ
from waiting import eventually_sync
from writ.cli import app
from writ.runtime.supervisor import Plane

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
POLICY = (ROOT / "deploy" / "policies" / "default.cedar").read_text()


@dataclass(frozen=True)
class World:
    env: dict[str, str]
    agent: str
    time_server: str
    faulty_server: str
    db: Path


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def world(
    plane: Plane,
    tmp_path_factory: pytest.TempPathFactory,
    faulty_mcp: Callable[[Path], tuple[list[str], dict[str, str]]],
) -> World:
    """The default policy (destructive tools need one grant from `operators`), a time server and a
    row-writing server, an agent: all under fresh names, once for the module."""
    runner = CliRunner()
    cli_env = {"WRIT_DATA_DIR": str(plane.data_dir), "WRIT_NATS_URL": plane.nats_url, "COLUMNS": "200"}

    def writ(*args: str) -> Result:
        return runner.invoke(app, list(args), env=cli_env)

    suffix = uuid.uuid4().hex[:8]
    tmp_path = tmp_path_factory.mktemp("examples")
    policy = tmp_path / "policy.cedar"
    policy.write_text(re.sub(r'@quorum\("\d+"\)', '@quorum("1")', POLICY))
    ok(writ("policy", "load", str(policy)))
    time_server, faulty_server = f"time-{suffix}", f"rows-{suffix}"
    ok(writ("server", "add", time_server, "--", TIME_SERVER))
    db = tmp_path / "rows.sqlite3"
    argv, env = faulty_mcp(db)
    ok(writ("server", "add", faulty_server, *(f"--env={k}={v}" for k, v in env.items()), "--", *argv))
    agent = f"ex-{suffix}"
    ok(writ("agent", "register", agent, "--owner", "tests"))
    full_env = {**os.environ, "WRIT_DATA_DIR": str(plane.data_dir), "WRIT_NATS_URL": plane.nats_url}
    return World(full_env, agent, time_server, faulty_server, db)


def example(name: str, *args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json(out: str) -> dict[str, object]:
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_a_plain_agent_gets_its_signed_receipt(world: World) -> None:
    done = example(
        "agent.py", world.agent, f"{world.time_server}/get_current_time", "--args", '{"timezone": "UTC"}', env=world.env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    receipt = last_json(done.stdout)
    assert receipt["status"] == "succeeded"
    assert str(receipt["receipt_hash"]).startswith("sha256:")


def test_an_mcp_client_calls_through_the_gateway(world: World) -> None:
    done = example(
        "mcp_client.py",
        world.agent,
        f"{world.time_server}/get_current_time",
        "--args",
        '{"timezone": "UTC"}',
        env=world.env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    listed = json.loads(done.stdout.splitlines()[0])
    assert any("get_current_time" in name for name in listed["tools"])
    called = last_json(done.stdout)
    assert called["is_error"] is False
    writ_meta = called["writ"]
    assert isinstance(writ_meta, dict) and writ_meta.get("writ/status") == "succeeded"
    assert str(writ_meta.get("writ/intent_id", "")).startswith("in-")


def rows(db: Path, token: str) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM rows WHERE token = ?", (token,)).fetchone()[0])


def test_an_approver_service_grants_by_its_rule_and_signs_each_decision(
    world: World, writ: Writ, tmp_path: Path
) -> None:
    approver = f"svc-{uuid.uuid4().hex[:8]}"
    key = tmp_path / f"{approver}.key"
    ok(writ("approver", "keygen", approver, "--out", str(key)))
    ok(writ("approver", "register", approver, "--group", "operators", "--public-key", str(key.with_suffix(".pub"))))
    service = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "approver_service.py"), approver, str(key), "--grant-tool", "append_row",
         "--count", "1"],
        env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert service.stdout is not None
        listening = json.loads(service.stdout.readline() or "{}")
        assert "operators" in listening.get("groups", []), service.stderr.read() if service.poll() is not None else ""
        token = f"tok-{uuid.uuid4().hex[:8]}"
        done = example(
            "agent.py", world.agent, f"{world.faulty_server}/append_row", "--args", json.dumps({"token": token}),
            "--timeout", "60", env=world.env,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert last_json(done.stdout)["status"] == "succeeded"
        assert rows(world.db, token) == 1
        out, err = service.communicate(timeout=30)
        decision = last_json(out)
        assert decision["decision"] == "grant" and decision["outcome"] == "authorized", out + err
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(timeout=10)
    receipt = ok(writ("receipt", "show", str(decision["intent_id"]), "--json"))
    assert approver in json.loads(receipt.stdout)["approvers"]


def test_an_analyst_script_counts_denials_with_a_summary_token(world: World, writ: Writ) -> None:
    # A call the default policy refuses: an unknown tool is rejected, so deny one by policy instead.
    policy = "forbid(principal, action, resource) when { context.arguments has timezone };\n" + re.sub(
        r'@quorum\("\d+"\)', '@quorum("1")', POLICY
    )
    path = Path(world.db).with_name("deny.cedar")
    path.write_text(policy)
    ok(writ("policy", "load", str(path)))
    try:
        done = example(
            "agent.py",
            world.agent,
            f"{world.time_server}/get_current_time",
            "--args",
            '{"timezone": "UTC"}',
            env=world.env,
        )
    finally:
        ok(writ("policy", "load", "--default"))  # the session plane's other modules expect no such forbid
    assert done.returncode == 1, done.stdout + done.stderr
    denied_id = last_json(done.stdout)["intent_id"]
    created = ok(writ("views", "token", "create", f"analyst-{uuid.uuid4().hex[:6]}"))
    token = re.search(r"\b(writv_[A-Za-z0-9_-]+)", created.stdout)
    assert token, created.stdout
    env = {**world.env, "WRIT_VIEWS_TOKEN": token.group(1)}

    def report_with_the_denial() -> tuple[str, dict[str, Any]] | None:  # the views follow the log a moment behind
        report = example("analyst.py", "--since", "1h", env=env)
        assert report.returncode == 0, report.stderr
        found = json.loads(report.stdout)
        tools = {row["tool"] for row in found["denied_by_tool_and_code"]}
        return (report.stdout, found) if f"{world.time_server}/get_current_time" in tools else None

    stdout, found = eventually_sync(report_with_the_denial, 20, f"{denied_id} among the denials")
    assert found["denied"] >= 1
    assert "UTC" not in stdout  # a summary token never sees argument values
