"""Secrets are brokered, never handed out: the canary.

A plane of its own (so its trace file and secrets key are set for every service) runs tool
servers that echo the secret they were given, over stdio (environment) and HTTP (header). After
the calls, every byte the plane wrote — the raw JetStream store, every service log, the spans,
the ledger's projections, Redis, the (encrypted) secret store — and every receipt and CLI output
must hold the secret in no form, while the receipts show the redaction marker: the tools really
did receive it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from click.testing import Result
from nats.aio.msg import Msg
from typer.testing import CliRunner

from cli_runner import INTENT_ID
from writ.cli import app
from writ.runtime.processes import free_port
from writ.runtime.supervisor import SERVICES, Plane

pytestmark = pytest.mark.e2e

SERVERS = Path(__file__).resolve().parents[1] / "servers"
SECRET = f"canary-{uuid.uuid4().hex}"
ROTATED = f"rotated-{uuid.uuid4().hex}"
MARKER = "[redacted:canary-token]"
SECRETS_KEY = base64.b64encode(uuid.uuid4().bytes * 2).decode()


@dataclass
class Canary:
    plane: Plane
    invoke: Callable[..., Result]
    outputs: list[str] = field(default_factory=list)  # everything the CLI printed, scanned at the end

    def __call__(self, *args: str, input: str | None = None) -> Result:
        result = self.invoke(*args, input=input)
        self.outputs.append(result.output)
        return result


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Canary]:
    data = tmp_path_factory.mktemp("secrets-plane") / "data"
    plane = Plane(data, nats_port=free_port(), redis_port=free_port())
    trace_file = str(data / "traces.jsonl")
    plane.service_env = {name: {"WRIT_TRACE_FILE": trace_file} for name in SERVICES}
    plane.service_env["executor"]["WRIT_SECRETS_KEY"] = SECRETS_KEY
    with plane:
        plane.wait_ready(timeout=60.0)
        runner = CliRunner()
        env = {"WRIT_DATA_DIR": str(plane.data_dir), "WRIT_NATS_URL": plane.nats_url, "COLUMNS": "200"}

        def invoke(*args: str, input: str | None = None) -> Result:
            return runner.invoke(app, list(args), env=env, input=input)

        yield Canary(plane, invoke)


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(SERVERS / "secret_echo_http.py"), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def call(canary: Canary, tool: str) -> dict[str, object]:
    """Submit, wait, and return the stored receipt as JSON."""
    submitted = canary("intent", "submit", tool, "--as", "canary-bot", "--wait")
    found = INTENT_ID.search(submitted.stdout)
    assert found, submitted.output
    shown = ok(canary("receipt", "show", found.group(1), "--json"))
    receipt: dict[str, object] = json.loads(shown.stdout)
    return receipt


def forms(secret: str) -> dict[str, bytes]:
    """The secret as bytes, and encoded the ways a leak would likely take."""
    raw = secret.encode()
    found = {"raw": raw, "hex": raw.hex().encode(), "HEX": raw.hex().upper().encode()}
    for shift in range(3):  # base64 at every alignment inside a longer string: the stable middle
        encoded = base64.b64encode(b"x" * shift + raw)
        found[f"base64+{shift}"] = encoded[4:-4]
        found[f"base64url+{shift}"] = base64.urlsafe_b64encode(b"x" * shift + raw)[4:-4]
    return found


def leaks(blob: bytes, secret: str) -> list[str]:
    return [name for name, needle in forms(secret).items() if needle in blob]


def test_set_list_and_delete_never_show_a_value(canary: Canary, tmp_path: Path) -> None:
    done = ok(canary("secret", "set", "canary-token", input=SECRET + "\n"))
    assert "canary-token" in done.stdout
    secret_file = tmp_path / "value"
    secret_file.write_text("temp-value-123\n")
    ok(canary("secret", "set", "temp-token", "--from-file", str(secret_file)))
    listed = ok(canary("secret", "list"))
    assert "canary-token" in listed.stdout and "temp-token" in listed.stdout
    ok(canary("secret", "delete", "temp-token"))
    assert "temp-token" not in ok(canary("secret", "list")).stdout
    refused = canary("secret", "set", "Bad.Name", input="whatever\n")
    assert refused.exit_code == 1 and "invalid_secret_name" in refused.stderr
    empty = canary("secret", "set", "empty", input="")
    assert empty.exit_code == 1 and "invalid_secret" in empty.stderr
    store = canary.plane.data_dir / "executor" / "secrets"
    assert (store / "store.json").stat().st_mode & 0o077 == 0
    assert not (store / "key").exists()  # WRIT_SECRETS_KEY was given: no key beside the store


def test_calls_get_the_secret_and_nothing_the_plane_wrote_holds_it(canary: Canary, http_server: str) -> None:
    ok(canary("secret", "set", "canary-token", input=SECRET + "\n"))
    ok(canary("agent", "register", "canary-bot", "--owner", "tests"))
    ok(canary("policy", "load", "--default"))
    stdio = [sys.executable, str(SERVERS / "secret_echo_stdio.py")]
    ok(canary("server", "add", "canary", "--env", "CANARY_TOKEN=secret:canary-token", "--", *stdio))
    for _ in range(100):  # the HTTP server may still be starting
        added = canary(
            "server", "add", "canary-http", "--url", http_server, "--header", "X-Api-Key=secret:canary-token"
        )
        if added.exit_code == 0:
            break
        assert "discovery_failed" in added.stderr, added.output
        time.sleep(0.1)
    ok(added)
    listed = ok(canary("server", "list"))
    assert "env CANARY_TOKEN=secret:canary-token" in listed.stdout
    assert "header X-Api-Key=secret:canary-token" in listed.stdout

    receipts = [call(canary, "canary/reveal") for _ in range(3)]
    receipts += [call(canary, "canary/reveal_structured"), call(canary, "canary/fail_loudly")]
    assert call(canary, "canary/crash_with_trace")["status"] == "failed"  # its traceback goes to stderr
    receipts += [call(canary, "canary-http/reveal_header") for _ in range(2)]

    # The tools saw the secret: what they echoed back came out as the marker.
    for receipt in receipts[:3]:
        assert receipt["status"] == "succeeded", receipt
        assert f"my token is {MARKER}" in json.dumps(receipt["result"])
    structured = json.dumps(receipts[3]["result"])
    assert structured.count(MARKER) >= 4, structured  # raw, nested list, base64, hex
    assert receipts[4]["status"] == "failed" and receipts[4]["code"] == "tool_error"
    # The tool's own error text is in the result (redacted), never in the reason a summary reader sees.
    assert MARKER in json.dumps(receipts[4]["result"]) and MARKER not in str(receipts[4]["reason"])
    for receipt in receipts[5:]:
        assert receipt["status"] == "succeeded", receipt
        assert f"called with X-Api-Key {MARKER}" in json.dumps(receipt["result"])

    # The server printed the secret to its stderr; it reached the executor's log scrubbed.
    executor_log = (canary.plane.logs_dir / "executor.log").read_text()
    assert f"canary starting with CANARY_TOKEN={MARKER}" in executor_log
    assert f"unexpected failure with credentials {MARKER}" in executor_log

    # A new value: the warm session is replaced, the tool gets the new value, and it is scrubbed too.
    ok(canary("secret", "set", "canary-token", input=ROTATED + "\n"))
    rotated = call(canary, "canary/reveal")
    assert rotated["status"] == "succeeded" and f"my token is {MARKER}" in json.dumps(rotated["result"])
    receipts.append(rotated)

    export = canary.plane.data_dir.parent / "export"
    ok(canary("ledger", "export", str(export)))
    ok(canary("ledger", "verify"))

    trace_file = canary.plane.data_dir / "traces.jsonl"
    assert trace_file.stat().st_size > 0
    scanned = [p for p in [*canary.plane.data_dir.rglob("*"), *export.rglob("*")] if p.is_file()]
    kinds = {p.relative_to(canary.plane.data_dir.parent).parts[1] for p in scanned}
    assert {"nats", "logs", "ledger", "executor", "traces.jsonl"} <= kinds, kinds
    for secret in (SECRET, ROTATED):
        hits = {str(p): found for p in scanned if (found := leaks(p.read_bytes(), secret))}
        assert hits == {}
        assert leaks(json.dumps(receipts).encode(), secret) == []
        assert leaks("\n".join(canary.outputs).encode(), secret) == []


def test_what_a_tool_says_during_a_call_is_relayed_scrubbed(canary: Canary) -> None:
    """The executor relays a call's log and progress messages to the agent's gateway (core NATS,
    writ.notice.<agent>.<intent>.message|progress): a new way out of the executor, scrubbed too."""
    ok(canary("secret", "set", "canary-token", input=SECRET + "\n"))
    ok(canary("agent", "register", "chatty-bot", "--owner", "tests"))
    ok(canary("policy", "load", "--default"))
    stdio = [sys.executable, str(SERVERS / "secret_echo_stdio.py")]
    ok(canary("server", "add", "chatty", "--env", "CANARY_TOKEN=secret:canary-token", "--", *stdio))

    async def relayed() -> list[bytes]:
        nc = await nats.connect(canary.plane.nats_url, **canary.plane.settings.bus_options())
        heard: list[bytes] = []

        async def hear(msg: Msg) -> None:
            heard.append(msg.subject.encode() + b" " + msg.data)

        await nc.subscribe("writ.notice.chatty-bot.*.*", cb=hear)
        submitted = await asyncio.to_thread(
            canary, "intent", "submit", "chatty/chatter", "--as", "chatty-bot", "--wait"
        )
        assert "succeeded" in submitted.stdout, submitted.output
        await asyncio.sleep(0.5)
        await nc.close()
        return heard

    heard = asyncio.run(relayed())
    said = b"\n".join(heard)
    assert b".message " in said and f"logging in with {MARKER}".encode() in said, said
    assert b".progress " in said and f"step one used {MARKER}".encode() in said, said
    assert leaks(said, SECRET) == []


def test_a_missing_secret_fails_the_intent_with_a_clear_reason(canary: Canary) -> None:
    stdio = [sys.executable, str(SERVERS / "secret_echo_stdio.py")]
    refused = canary("server", "add", "needs-unset", "--env", "CANARY_TOKEN=secret:never-set", "--", *stdio)
    assert refused.exit_code == 1
    assert "error: secret_missing:" in refused.stderr and "never-set" in refused.stderr

    ok(canary("secret", "set", "short-lived", input="short-lived-value\n"))
    ok(canary("agent", "register", "missing-bot", "--owner", "tests"))
    ok(canary("policy", "load", "--default"))
    ok(canary("server", "add", "fragile", "--env", "CANARY_TOKEN=secret:short-lived", "--", *stdio))
    deleted = ok(canary("secret", "delete", "short-lived"))
    assert "fragile" in deleted.stderr  # warned: a server still refers to it
    submitted = canary("intent", "submit", "fragile/reveal", "--as", "missing-bot", "--wait")
    assert submitted.exit_code == 1
    found = INTENT_ID.search(submitted.stdout)
    assert found, submitted.output
    receipt = json.loads(ok(canary("receipt", "show", found.group(1), "--json")).stdout)
    assert receipt["status"] == "failed" and receipt["code"] == "secret_missing", receipt
    assert "short-lived" in receipt["reason"] and "short-lived-value" not in json.dumps(receipt)
