"""Human approval through the `writ` CLI against the session's running plane, as a person would do it."""

from __future__ import annotations

import json
import os
import queue
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from typer.testing import Result

from cli_runner import INTENT_ID, Writ, cli
from waiting import eventually_sync
from writ.runtime.supervisor import Plane

pytestmark = pytest.mark.e2e

WRIT = str(Path(sys.executable).parent / "writ")
REQUESTED = re.compile(r"new approval request · (in-[a-z2-7]+)")
POLICY = (Path(__file__).resolve().parents[2] / "deploy" / "policies" / "default.cedar").read_text()


@dataclass(frozen=True)
class Setup:
    env: dict[str, str]
    agent: str
    server: str
    approver: str  # in group operators
    outsider: str  # in another group
    db: Path


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def faulty_server(
    plane: Plane,
    tmp_path_factory: pytest.TempPathFactory,
    faulty_mcp: Callable[[Path], tuple[list[str], dict[str, str]]],
) -> tuple[str, Path]:
    """A faulty MCP server for the module, added once, and its database (name, db): each test
    writes rows under tokens of its own and counts only those."""
    db = tmp_path_factory.mktemp("approvals-cli") / "faulty.sqlite3"
    argv, env = faulty_mcp(db)
    server = f"faulty-{uuid.uuid4().hex[:8]}"
    added = ok(cli(plane)("server", "add", server, *(f"--env={k}={v}" for k, v in env.items()), "--", *argv))
    assert "append_row" in added.stdout
    return server, db


@pytest.fixture
def setup(plane: Plane, writ: Writ, tmp_path: Path, faulty_server: tuple[str, Path]) -> Setup:
    """Our own policy (destructive tools need 1 approval from `operators`), the module's faulty MCP
    server, an agent, an approver in `operators` and one outside it — all under fresh names."""
    suffix = uuid.uuid4().hex[:8]
    policy = tmp_path / "policy.cedar"
    policy.write_text(re.sub(r'@quorum\("\d+"\)', '@quorum("1")', POLICY))
    ok(writ("policy", "load", str(policy)))
    server, db = faulty_server
    agent, approver, outsider = f"ap-agent-{suffix}", f"carol-{suffix}", f"mallory-{suffix}"
    ok(writ("agent", "register", agent, "--owner", "tests"))
    ok(writ("approver", "register", approver, "--group", "operators"))
    ok(writ("approver", "register", outsider, "--group", f"auditors-{suffix}"))
    full_env = {**os.environ, "WRIT_DATA_DIR": str(plane.data_dir), "WRIT_NATS_URL": plane.nats_url, "COLUMNS": "200"}
    return Setup(full_env, agent, server, approver, outsider, db)


class Lines:
    """Collects a pipe's lines on a thread, so a test can wait for one without blocking forever."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"{text!r} never came: {''.join(self.lines)}")
            self.lines.append(line)

    def rest(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (line := self._queue.get(timeout=max(0.01, deadline - time.monotonic()))) is not None:
            self.lines.append(line)
        return "".join(self.lines)


def rows(db: Path, token: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM rows WHERE token = ?", (token,)).fetchone()[0])


def listing_of(writ: Writ, approver: str, intent_id: str) -> str | None:
    """`writ approvals list` as ``approver`` once it shows ``intent_id``."""
    listed = ok(writ("approvals", "list", "--as", approver)).stdout
    return listed if intent_id in listed else None


def assert_one_error_line(result: Result, code: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {code}: "), lines[0]
    assert "Traceback" not in result.output


def test_watch_then_approve_lets_the_waiting_agent_succeed(writ: Writ, setup: Setup) -> None:
    token = f"tok-{uuid.uuid4().hex[:8]}"
    watch = subprocess.Popen(
        [WRIT, "approvals", "watch", "--as", setup.approver, "--count", "1"],
        env=setup.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    submit: subprocess.Popen[str] | None = None
    try:
        watched = Lines(watch.stdout)  # type: ignore[arg-type]
        watched.wait_for("watching approval requests", timeout=30)
        tool, arguments = f"{setup.server}/append_row", json.dumps({"token": token})
        submit = subprocess.Popen(
            [WRIT, "intent", "submit", tool, "--args", arguments, "--as", setup.agent, "--wait", "--timeout", "60"],
            env=setup.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        printed = watched.rest(timeout=60)
        assert watch.wait(timeout=10) == 0, printed
        assert f"{setup.server}/append_row" in printed
        assert token in printed
        assert "operators" in printed
        found = REQUESTED.search(printed)
        assert found, printed
        intent_id = found.group(1)
        assert rows(setup.db, token) == 0  # nothing ran before a person said yes

        approved = ok(writ("approvals", "approve", intent_id, "--as", setup.approver, "--comment", "checked"))

        assert "authorized" in approved.stdout
        assert "1/1" in approved.stdout
        out, _ = submit.communicate(timeout=90)
        assert submit.returncode == 0, out
        found = INTENT_ID.search(out)
        assert found and found.group(1) == intent_id, out
        assert "succeeded" in out
        assert rows(setup.db, token) == 1
    finally:
        for proc in (watch, submit):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def test_an_approver_outside_the_group_is_refused_and_a_member_can_deny(writ: Writ, setup: Setup) -> None:
    token = f"tok-{uuid.uuid4().hex[:8]}"
    tool, arguments = f"{setup.server}/append_row", json.dumps({"token": token})
    submitted = ok(writ("intent", "submit", tool, "--args", arguments, "--as", setup.agent))
    found = INTENT_ID.search(submitted.stdout)
    assert found, submitted.output
    intent_id = found.group(1)
    # The request appears once identity, registry and policy have had their turn.
    eventually_sync(lambda: listing_of(writ, setup.approver, intent_id), 10, f"{intent_id} listed")

    shown = ok(writ("approvals", "show", intent_id, "--as", setup.approver))
    for expected in (setup.agent, f"{setup.server}/append_row", token, "destructive-needs-approval", "0/1 granted"):
        assert expected in shown.stdout, expected
    assert "sha256:" in shown.stdout

    assert intent_id not in ok(writ("approvals", "list", "--as", setup.outsider)).stdout
    refused = writ("approvals", "approve", intent_id, "--as", setup.outsider)
    assert_one_error_line(refused, "not_in_group")
    assert "operators" in refused.stderr

    denied = ok(writ("approvals", "deny", intent_id, "--as", setup.approver, "--comment", "not today"))
    assert "denied" in denied.stdout
    status = ok(writ("intent", "status", intent_id))
    assert "denied" in status.stdout
    assert rows(setup.db, token) == 0


def test_an_approver_keeps_their_private_key_on_their_own_machine(
    writ: Writ, setup: Setup, plane: Plane, tmp_path: Path
) -> None:
    """keygen where the approver is; the operator registers the public half; the data dir never holds it."""
    dave = f"dave-{uuid.uuid4().hex[:8]}"
    their_machine = tmp_path / "dave-laptop"
    private = their_machine / f"{dave}.key"
    made = ok(writ("approver", "keygen", dave, "--out", str(private)))
    assert "writ approver register" in made.stdout
    assert private.stat().st_mode & 0o777 == 0o600
    assert_one_error_line(writ("approver", "keygen", dave, "--out", str(private)), "key_exists")
    # Handing over the private file by mistake is refused, naming the file to send instead.
    mistaken = writ("approver", "register", dave, "--group", "operators", "--public-key", str(private))
    assert_one_error_line(mistaken, "key_invalid")
    assert f"{dave}.pub" in mistaken.stderr

    registered = ok(
        writ("approver", "register", dave, "--group", "operators", "--public-key", str(private.with_suffix(".pub")))
    )
    assert "none here" in registered.stdout
    assert not (plane.data_dir / "keys" / "approvers" / f"{dave}.key").exists()

    token = f"tok-{uuid.uuid4().hex[:8]}"
    submitted = ok(
        writ(
            "intent",
            "submit",
            f"{setup.server}/append_row",
            "--args",
            json.dumps({"token": token}),
            "--as",
            setup.agent,
        )
    )
    found = INTENT_ID.search(submitted.stdout)
    assert found, submitted.output
    intent_id = found.group(1)
    eventually_sync(lambda: listing_of(writ, dave, intent_id), 10, f"{intent_id} listed")
    # Without their key file here, the CLI says where it looked; with it, the grant counts.
    assert_one_error_line(writ("approvals", "approve", intent_id, "--as", dave), "key_missing")
    approved = ok(writ("approvals", "approve", intent_id, "--as", dave, "--key", str(private)))
    assert "authorized" in approved.stdout
    eventually_sync(lambda: rows(setup.db, token) or None, 20, "the approved row written")
    assert rows(setup.db, token) == 1
