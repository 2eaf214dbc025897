"""`writ views` against the session's supervised plane: the ledger process projects, answers the CLI
over NATS and serves the views HTTP API on the port runtime.json names."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import uuid

import pytest

from cli_runner import INTENT_ID, Writ
from writ.runtime.supervisor import Plane

pytestmark = pytest.mark.e2e


def api_status(url: str, token: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_views_commands_show_an_intent_its_stats_and_refuse_writes(writ: Writ, plane: Plane, time_server: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    agent, server = f"views-agent-{suffix}", time_server
    assert writ("agent", "register", agent, "--owner", "tests").exit_code == 0
    assert writ("policy", "load", "--default").exit_code == 0
    submitted = writ(
        "intent", "submit", f"{server}/get_current_time", "--args", '{"timezone": "UTC"}', "--as", agent, "--wait"
    )
    assert submitted.exit_code == 0, submitted.output
    found = INTENT_ID.search(submitted.stdout)
    assert found
    intent_id = found.group(1)

    deadline = time.monotonic() + 20
    while True:  # the receipt reaches the views a moment after the CLI saw it
        shown = writ("views", "intent", intent_id)
        if (shown.exit_code == 0 and "receipt #" in shown.stdout) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert shown.exit_code == 0, shown.output
    for expected in ("succeeded", "history", "intent.submitted", "execution.succeeded", "receipt #", "read-only-tools"):
        assert expected in shown.stdout, expected

    listed = writ("views", "intents", "--agent", agent, "--status", "succeeded")
    assert listed.exit_code == 0 and intent_id in listed.stdout, listed.output
    paged = writ("views", "intents", "--agent", agent, "--limit", "1", "--json")
    assert json.loads(paged.stdout)["intents"][0]["intent_id"] == intent_id

    stats = writ("views", "stats", "--by", "agent")
    assert stats.exit_code == 0 and agent in stats.stdout, stats.output

    selected = writ("views", "sql", f"SELECT status, attempts FROM intents WHERE intent_id = '{intent_id}'")
    assert selected.exit_code == 0 and "succeeded" in selected.stdout, selected.output
    refused = writ("views", "sql", "DELETE FROM intents")
    assert refused.exit_code == 1
    assert refused.stderr.strip().splitlines() == [
        "error: read_only: the views are read-only: only SELECT statements run here"
    ]
    assert "Traceback" not in refused.output

    status = writ("views", "status")
    assert status.exit_code == 0 and "WRIT_INTENTS" in status.stdout and "seconds behind" in status.stdout

    rebuilt = writ("views", "rebuild")
    assert rebuilt.exit_code == 0 and "rebuilt from" in rebuilt.stdout, rebuilt.output
    assert intent_id in writ("views", "intents", "--agent", agent).stdout

    api = json.loads((plane.data_dir / "runtime.json").read_text())["views_api"]
    created = writ("views", "token", "create", f"e2e-{suffix}")
    assert created.exit_code == 0, created.output
    assert f"summary token for e2e-{suffix}, arguments and results withheld" in created.stdout
    full = writ("views", "token", "create", f"e2e-full-{suffix}", "--scope", "full")
    assert full.exit_code == 0 and "full token for" in full.stdout, full.output
    refused = writ("views", "token", "create", f"e2e-bad-{suffix}", "--scope", "admin")
    assert refused.exit_code == 1 and refused.stderr.startswith("error: invalid_scope: "), refused.output
    token = re.search(r"^(writv_\S+)$", created.stdout, re.MULTILINE)
    assert token
    assert api_status(f"{api}/intents", None) == 401
    assert api_status(f"{api}/intents?agent={agent}", token.group(1)) == 200
