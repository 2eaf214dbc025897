"""The `writ` CLI against the session's running plane: register, submit, verify, and fail cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import Result

from cli_runner import INTENT_ID, TIME_SERVER, Writ
from writ.runtime.processes import free_port
from writ_common.signing import generate_key, public_key_b64

pytestmark = pytest.mark.e2e

WRIT = str(Path(sys.executable).parent / "writ")


@dataclass(frozen=True)
class Ready:
    agent: str
    server: str


@pytest.fixture
def ready(writ: Writ, time_server: str) -> Ready:
    """A fresh agent with its key, the session's mcp-server-time, and the default policy."""
    name = f"cli-agent-{uuid.uuid4().hex[:8]}"
    registered = writ("agent", "register", name, "--owner", "tests")
    assert registered.exit_code == 0, registered.output
    loaded = writ("policy", "load", "--default")
    assert loaded.exit_code == 0, loaded.output
    return Ready(name, time_server)


def submit(writ: Writ, ready: Ready, tool: str, args: dict[str, object]) -> tuple[Result, str]:
    result = writ(
        "intent", "submit", f"{ready.server}/{tool}", "--args", json.dumps(args), "--as", ready.agent, "--wait"
    )
    found = INTENT_ID.search(result.stdout)
    assert found, result.output
    return result, found.group(1)


def assert_one_error_line(result: Result, code: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {code}: "), lines[0]
    assert "Traceback" not in result.output


def test_submit_and_wait_prints_the_tool_output(writ: Writ, ready: Ready) -> None:
    result, _ = submit(writ, ready, "get_current_time", {"timezone": "Europe/Paris"})

    assert result.exit_code == 0, result.output
    assert "succeeded" in result.stdout
    assert "Europe/Paris" in result.stdout


def test_cancel_says_an_ended_intent_stays_as_it_ended_and_an_unknown_one_is_not_found(
    writ: Writ, ready: Ready
) -> None:
    _, intent_id = submit(writ, ready, "get_current_time", {"timezone": "UTC"})

    late = writ("intent", "cancel", intent_id, "--as", ready.agent, "--timeout", "5")
    assert late.exit_code == 1 and "had already ended succeeded" in late.stdout, late.output
    assert_one_error_line(writ("intent", "cancel", "in-nosuchintent", "--as", ready.agent), "not_found")


def test_arguments_failing_the_schema_exit_1_with_invalid_arguments(writ: Writ, ready: Ready) -> None:
    result, _ = submit(writ, ready, "get_current_time", {"timezone": 42})

    assert result.exit_code == 1
    assert "rejected" in result.stdout
    assert "invalid_arguments" in result.stdout


def test_agent_list_shows_the_registered_agent(writ: Writ, ready: Ready) -> None:
    listed = writ("agent", "list")

    assert listed.exit_code == 0, listed.output
    assert ready.agent in listed.stdout


def test_registering_twice_refuses_to_overwrite_the_key(writ: Writ, ready: Ready) -> None:
    again = writ("agent", "register", ready.agent)

    assert_one_error_line(again, "key_exists")


def test_stored_receipt_verifies(writ: Writ, ready: Ready) -> None:
    _, intent_id = submit(writ, ready, "get_current_time", {"timezone": "UTC"})

    verified = writ("receipt", "verify", intent_id)

    assert verified.exit_code == 0, verified.output
    assert verified.stdout.splitlines()[0] == "valid"
    assert "chain      ok" in verified.stdout


def test_receipt_file_verifies_offline_until_one_byte_changes(writ: Writ, ready: Ready, tmp_path: Path) -> None:
    _, intent_id = submit(writ, ready, "get_current_time", {"timezone": "Europe/Paris"})
    shown = writ("receipt", "show", intent_id, "--json")
    assert shown.exit_code == 0, shown.output
    original = shown.stdout.encode()
    path = tmp_path / "r.json"
    path.write_bytes(original)
    assert writ("receipt", "verify", "--file", str(path)).exit_code == 0

    def altered(position: int, byte: int) -> Result:
        data = bytearray(original)
        data[position] = byte
        path.write_bytes(bytes(data))
        return writ("receipt", "verify", "--file", str(path))

    paris = original.index(b"Europe/Paris")
    space = original.index(b'": ') + 2
    newline = original.index(b"\n")
    cases = {
        "a letter of the tool output": (paris + 7, ord("X")),
        "a space (still valid JSON)": (space, ord("\t")),
        "a quote (no longer JSON)": (original.index(b'"'), ord("'")),
        "a newline (still valid JSON)": (newline, ord(" ")),
    }
    # ...and, spread over the whole file, flipping the lowest bit of a byte.
    for position in range(0, len(original), max(1, len(original) // 40)):
        cases[f"bit 0 of byte {position}"] = (position, original[position] ^ 1)
    for what, (position, byte) in cases.items():
        result = altered(position, byte)
        assert result.exit_code == 1, f"{what}: {result.output}"
        assert result.stderr.startswith("error: receipt_invalid: "), f"{what}: {result.stderr}"
        assert "Traceback" not in result.output


def test_receipt_file_signed_by_another_key_is_refused(writ: Writ, ready: Ready, tmp_path: Path) -> None:
    _, intent_id = submit(writ, ready, "get_current_time", {"timezone": "UTC"})
    path = tmp_path / "r.json"
    path.write_text(writ("receipt", "show", intent_id, "--json").stdout)

    result = writ("receipt", "verify", "--file", str(path), "--public-key", public_key_b64(generate_key()))

    assert_one_error_line(result, "receipt_invalid")
    assert "wrong key" in result.stderr


def test_missing_key_file_is_one_error_line(writ: Writ, ready: Ready) -> None:
    result = writ("intent", "submit", "get_current_time", "--as", "nobody-has-this-key")

    assert_one_error_line(result, "key_missing")


def test_without_a_plane_a_command_prints_one_error_line(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "WRIT_DATA_DIR": str(tmp_path), "WRIT_NATS_URL": f"nats://127.0.0.1:{port}"}

    done = subprocess.run([WRIT, "agent", "list"], env=env, capture_output=True, text=True, timeout=30, check=False)

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: no_plane: no Writ plane is running at nats://127.0.0.1:{port}; "
        "start one with `make run` (or `writ up`)"
    ]


def test_demo_tells_the_whole_story_against_the_running_plane(writ: Writ) -> None:
    told = writ("demo")

    assert told.exit_code == 0, told.output
    for expected in ("succeeded", "Europe/Paris", "forbidden", "invalid_arguments", "unknown_tool", "bad_signature"):
        assert expected in told.stdout, expected
    assert "\nvalid\n" in told.stdout
    assert "demo complete" in told.stdout


def test_built_in_default_policy_matches_the_deploy_file() -> None:
    from writ.cli.base import DEFAULT_POLICY_FALLBACK, default_policy_file

    path = default_policy_file()
    assert path is not None
    assert path.read_text() == DEFAULT_POLICY_FALLBACK, "update DEFAULT_POLICY_FALLBACK in src/writ/cli/base.py"


def test_ledger_verify_and_an_offline_export_that_names_each_tampering(
    writ: Writ, ready: Ready, tmp_path: Path
) -> None:
    for zone in ("UTC", "Asia/Tokyo", "Europe/Paris"):
        submit(writ, ready, "get_current_time", {"timezone": zone})
    online = writ("ledger", "verify")
    assert online.exit_code == 0 and "valid" in online.stdout, online.output

    export = tmp_path / "export"
    assert writ("ledger", "export", str(export)).exit_code == 0
    assert writ("ledger", "verify", "--dir", str(export)).exit_code == 0
    lines = (export / "receipts.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) >= 3

    def verify_with(tampered: list[bytes]) -> Result:
        (export / "receipts.jsonl").write_bytes(b"".join(tampered))
        return writ("ledger", "verify", "--dir", str(export))

    altered = list(lines)
    altered[1] = altered[1].replace(b'"reason":"', b'"reason":"X', 1)  # one byte more
    result = verify_with(altered)
    assert result.exit_code == 1 and "hash_mismatch at position 2" in result.stdout, result.output

    result = verify_with([lines[0], *lines[2:]])  # one deleted
    assert result.exit_code == 1 and "broken_link at position 3" in result.stdout, result.output

    result = verify_with([lines[0], lines[2], lines[1], *lines[3:]])  # two reordered
    assert result.exit_code == 1 and "broken_link" in result.stdout, result.output

    forged = json.loads(lines[1])
    forged["intent_id"] = "in-forged"
    result = verify_with([lines[0], lines[1], json.dumps(forged).encode() + b"\n", *lines[2:]])
    assert result.exit_code == 1 and "hash_mismatch at position 2" in result.stdout, result.output
    assert "receipt_without_terminal" in result.stdout
    assert result.stderr.strip().startswith("error: ledger_invalid: ")


def test_tool_override_changes_the_hints_policy_and_retries_see(writ: Writ, ready: Ready) -> None:
    server = f"time-{uuid.uuid4().hex[:8]}"  # its own: the session's time server stays as it declares itself
    added = writ("server", "add", server, "--", TIME_SERVER)
    assert added.exit_code == 0, added.output
    overridden = writ("tool", "override", f"{server}/convert_time", "--not-idempotent", "--destructive")
    assert overridden.exit_code == 0, overridden.output
    listed = writ("tool", "list", "--server", server)
    row = next(line for line in listed.stdout.splitlines() if "convert_time" in line)
    assert row.split()[3:6] == ["yes", "yes", "no"], row  # read-only, destructive, idempotent
    assert_one_error_line(writ("tool", "override", "no-slash", "--idempotent"), "invalid_tool")
    assert_one_error_line(writ("tool", "override", f"{server}/nope", "--idempotent"), "unknown_tool")


def test_reconcile_an_unknown_outcome_from_the_cli(
    writ: Writ, ready: Ready, tmp_path: Path, faulty_mcp: Callable[[Path], tuple[list[str], dict[str, str]]]
) -> None:
    argv, env = faulty_mcp(tmp_path / "faulty.sqlite3")
    server = f"crashy-{uuid.uuid4().hex[:6]}"
    added = writ("server", "add", server, "--env", f"FAULTY_DB={env['FAULTY_DB']}", "--", *argv)
    assert added.exit_code == 0, added.output
    policy = tmp_path / "crash.cedar"
    policy.write_text('@id("let-it-crash")\npermit(principal, action == Action::"call_tool", resource);\n')
    assert writ("policy", "load", str(policy)).exit_code == 0
    result = writ("intent", "submit", f"{server}/crash", "--as", ready.agent, "--wait", "--timeout", "60")
    assert result.exit_code == 1 and "outcome_unknown" in result.stdout, result.output
    found = INTENT_ID.search(result.stdout)
    assert found
    assert_one_error_line(writ("intent", "reconcile", found.group(1)), "invalid_option")
    settled = writ("intent", "reconcile", found.group(1), "--failed", "--by", "alice", "--note", "no effect seen")
    assert settled.exit_code == 0 and "reconciled" in settled.stdout, settled.output
    assert_one_error_line(writ("intent", "reconcile", found.group(1), "--succeeded"), "already_reconciled")


def test_rotate_and_revoke_an_agent_from_the_cli(writ: Writ, ready: Ready) -> None:
    rotated = writ("agent", "rotate-key", ready.agent, "--grace", "0")
    assert rotated.exit_code == 0 and "rotated" in rotated.stdout, rotated.output
    result, _ = submit(writ, ready, "get_current_time", {"timezone": "UTC"})  # signed with the new key file
    assert result.exit_code == 0, result.output
    shown = writ("agent", "show", ready.agent)
    assert shown.exit_code == 0 and "previous_key_id" in shown.stdout
    assert writ("agent", "revoke", ready.agent, "--reason", "test").exit_code == 0
    result = writ("intent", "submit", f"{ready.server}/get_current_time", "--args", "{}", "--as", ready.agent)
    # Its bus user is gone with it: the nats-server no longer lets the agent in at all.
    assert_one_error_line(result, "not_authorized")
    assert "a revoked agent" in result.output
    assert_one_error_line(writ("agent", "revoke", ready.agent), "already_revoked")
