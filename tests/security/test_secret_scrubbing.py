"""A hostile (or careless) tool server holds a multi-line secret, a PEM private key, and tries to
get it out through the executor: raw, JSON-escaped, line by line, and on its stderr where the
value spans lines. The executor must scrub every one of those forms, so the key is in nothing
the plane writes: not the receipt, not the intent stream, not the views, not the logs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import uuid
from pathlib import Path

import nats
import pytest

from cli_runner import INTENT_ID, Writ
from waiting import eventually_sync
from writ.runtime.supervisor import Plane
from writ_common import subjects
from writ_common.bus import direct_get_batch

pytestmark = pytest.mark.security

SERVER = Path(__file__).resolve().parents[1] / "servers" / "pem_echo_stdio.py"
MIN_LINE = 4  # the executor's MIN_SECRET_LENGTH: shorter lines are not secret on their own


def canary_pem() -> str:
    """A fresh PEM block: a non-ASCII header line, three full base64 lines and a short last one."""
    body = base64.b64encode(os.urandom(162)).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join(
        [
            "-----BEGIN CANARY PRIVATE KEY-----",
            f"Comment: clé-secrète-{uuid.uuid4().hex[:8]}",
            *lines,
            "-----END CANARY PRIVATE KEY-----",
        ]
    )


def leaked_forms(value: str) -> dict[str, bytes]:
    """The value and each of its lines, as the bytes a leak would put in a file or an output."""
    forms = {
        "raw": value.encode(),
        "json-escaped": json.dumps(value)[1:-1].encode(),
        "json-escaped, non-ASCII kept": json.dumps(value, ensure_ascii=False)[1:-1].encode(),
    }
    for number, line in enumerate(value.splitlines()):
        if len(line) >= MIN_LINE:
            forms[f"line {number}"] = line.encode()
    return forms


def leaks(blob: bytes, value: str) -> list[str]:
    return [name for name, needle in leaked_forms(value).items() if needle in blob]


def intent_stream(plane: Plane, intent_id: str) -> bytes:
    """Every message of the intent on the intents stream, as stored."""

    async def read() -> bytes:
        nc = await nats.connect(plane.nats_url, **plane.settings.bus_options())
        try:
            msgs = await direct_get_batch(nc, subjects.INTENTS_STREAM, f"{subjects.INTENT_PREFIX}.*.{intent_id}.>")
        finally:
            await nc.close()
        assert msgs, f"no events of {intent_id} on the intents stream"
        return b"\n".join(m.data or b"" for m in msgs)

    return asyncio.run(read())


def test_a_pem_secret_echoed_raw_json_escaped_and_line_by_line_is_scrubbed_everywhere(
    writ: Writ, plane: Plane, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    value = canary_pem()
    value_file = tmp_path / "key.pem"
    value_file.write_text(value + "\n")
    outputs: list[str] = []

    def ok(*args: str) -> str:
        result = writ(*args)
        outputs.append(result.output)
        assert result.exit_code == 0, result.output
        return str(result.stdout)

    secret, server, agent = f"pem-{suffix}", f"pem-{suffix}", f"pem-bot-{suffix}"
    ok("secret", "set", secret, "--from-file", str(value_file))
    ok("server", "add", server, "--env", f"PEM_KEY=secret:{secret}", "--", sys.executable, str(SERVER))
    ok("agent", "register", agent, "--owner", "tests")
    ok("policy", "load", "--default")  # the echo tools are read-only
    marker = f"[redacted:{secret}]"

    ids = []
    for tool in ("echo_raw", "echo_escaped", "echo_lines"):
        submitted = ok("intent", "submit", f"{server}/{tool}", "--as", agent, "--wait")
        found = INTENT_ID.search(submitted)
        assert found, submitted
        ids.append(found.group(1))

    for intent_id in ids:
        receipt = ok("receipt", "show", intent_id, "--json")
        assert json.loads(receipt)["status"] == "succeeded", receipt
        assert marker in receipt, receipt  # the tool did get the key, and what it said of it was scrubbed
        assert leaks(receipt.encode(), value) == [], f"receipt of {intent_id}"
        assert leaks(intent_stream(plane, intent_id), value) == [], f"intent stream of {intent_id}"
        for view in (ok("views", "intent", intent_id, "--json"), ok("views", "intent", intent_id)):
            assert leaks(view.encode(), value) == [], f"views of {intent_id}"

    # The server's stderr went to the executor's log, scrubbed: the value across lines, escaped, and
    # line by line (the last line is written once the server has been quiet for a moment).
    executor_log = plane.logs_dir / "executor.log"
    logged = eventually_sync(
        lambda: text if f"line 0: {marker}\n" in (text := executor_log.read_text()) else None,
        30,
        "the server's last stderr line in the executor's log",
    )
    assert f"pem echo starting with PEM_KEY={marker}\n" in logged
    assert f'echo_escaped: {{"key": "{marker}"}} {{"key": "{marker}"}}' in logged
    assert f"line 0: {marker}\n" in logged
    files = [p for p in plane.data_dir.rglob("*") if p.is_file()]
    hits = {str(p): found for p in files if (found := leaks(p.read_bytes(), value))}
    assert hits == {}, "the key is in the data dir's files"
    assert leaks("\n".join(outputs).encode(), value) == []
