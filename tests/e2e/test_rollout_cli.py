"""`writ policy rollout` against the session's running plane: a bad declaration is one error line
and starts nothing; a rollout shows its slice and triggers, refuses a load meanwhile, and an abort
says who rolled it back, in the CLI and in `writ views rollouts`."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from click.testing import Result

from cli_runner import Writ

pytestmark = pytest.mark.e2e

CANDIDATE = (
    '@id("read-only-tools")\npermit(principal, action == Action::"call_tool", resource) when { resource.read_only };\n'
    '@id("clock-reads")\npermit(principal, action == Action::"call_tool", resource)'
    ' when { resource.name == "get_current_time" };\n'
)


def one_error_line(result: Result, code: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().startswith(f"error: {code}: "), result.stderr
    assert "Traceback" not in result.output


def test_a_rollout_from_the_cli_declared_shown_refused_meanwhile_and_aborted(writ: Writ, tmp_path: Path) -> None:
    assert writ("policy", "load", "--default").exit_code == 0
    candidate = tmp_path / "candidate.cedar"
    candidate.write_text(CANDIDATE)
    agent = f"cli-canary-{uuid.uuid4().hex[:8]}"
    declared = ("policy", "rollout", str(candidate), "--agents", agent, "--promote-after", "10m")

    bad = writ(*declared, "--rollback-if", "denial_rate>0.2 over 5 minutes")
    one_error_line(bad, "invalid_rollout")
    assert "must look like" in bad.stderr

    started = writ(*declared, "--rollback-if", "denial_rate>0.2 over 5m", "--rollback-if", "approval_backlog>3")
    assert started.exit_code == 0, started.output
    try:
        assert "in_progress" in started.stdout and agent in started.stdout
        status = writ("policy", "rollout", "status", "--json")
        assert status.exit_code == 0, status.output
        shown = json.loads(status.stdout)
        assert shown["triggers"] == ["denial_rate>0.2 over 5m", "approval_backlog>3"]
        assert shown["agents"] == [agent] and shown["status"] == "in_progress"
        one_error_line(writ("policy", "load", "--default"), "rollout_in_progress")
        assert f"enforced for {agent}" in writ("policy", "show").stdout
    finally:
        aborted = writ("policy", "rollout", "abort")
    assert aborted.exit_code == 0, aborted.output
    assert "rolled_back by operator" in aborted.stdout and "aborted by an operator" in aborted.stdout
    for _ in range(50):  # the views follow the policy stream within a poll
        views = writ("views", "rollouts", "--json")
        assert views.exit_code == 0, views.output
        row = json.loads(views.stdout)["rollouts"][0]
        if row["status"] != "in_progress":
            break
        time.sleep(0.1)
    assert (row["rollout_id"], row["status"], row["ended_by"]) == (shown["rollout_id"], "rolled_back", "operator")
    assert writ("views", "rollouts").exit_code == 0
