"""The console's HTTP side, on the ledger's views port of the session's plane: its files with a
strict CSP, the loopback-Host and same-origin guard, the approvals API beside the views API, and
the receipt check an intent's page shows."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import secrets
import uuid
from typing import Any

import nats
import pytest

from writ.runtime.supervisor import Plane
from writ.sdk import WritAgent, wait_receipt
from writ_common import commands
from writ_common.approvals_api import auth_header
from writ_common.signing import generate_key, public_key_b64

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def request(
    plane: Plane, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One raw request (http.client sends the Host header we give it, unlike urllib)."""
    conn = http.client.HTTPConnection("127.0.0.1", plane.views_port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True)
        sent = {"Host": f"127.0.0.1:{plane.views_port}", **(headers or {})}
        for name, value in sent.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


async def fetch(plane: Plane, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(request, plane, method, path, **kwargs)


async def test_the_console_is_served_with_a_strict_csp(plane: Plane) -> None:
    status, headers, body = await fetch(plane, "GET", "/console/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    assert b"<script" in body and b"<script>" not in body  # only external module scripts
    status, headers, _ = await fetch(plane, "GET", "/console/keys.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    status, _, _ = await fetch(plane, "GET", "/console/..%2Fapi.py")
    assert status == 404
    status, headers, _ = await fetch(plane, "GET", "/")
    assert status == 302 and headers["location"] == "/console/"
    status, headers, _ = await fetch(plane, "GET", "/intents")
    assert status == 401 and "content-security-policy" in headers  # the APIs carry the headers too


async def test_foreign_hosts_and_origins_are_refused(plane: Plane) -> None:
    port = plane.views_port
    status, _, body = await fetch(plane, "GET", "/console/", headers={"Host": f"attacker.example:{port}"})
    assert status == 403 and json.loads(body)["error"] == "bad_host"  # DNS rebinding
    status, _, _ = await fetch(plane, "GET", "/console/", headers={"Host": f"localhost:{port}"})
    assert status == 200
    cross = {"Origin": "http://attacker.example", "Content-Type": "application/json"}
    status, _, body = await fetch(plane, "POST", "/approvals/in-x/decision", headers=cross, body=b"{}")
    assert status == 403 and json.loads(body)["error"] == "cross_origin"
    status, _, body = await fetch(plane, "GET", "/intents", headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403 and json.loads(body)["error"] == "cross_origin"
    same = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
    status, _, body = await fetch(plane, "GET", "/intents", headers=same)
    assert status == 401  # let through to the API, which wants its token


async def test_approvals_and_receipt_checks_on_the_views_port(plane: Plane, faulty_mcp: Any, tmp_path: Any) -> None:
    suffix = uuid.uuid4().hex[:8]
    nc = await nats.connect(plane.nats_url, **plane.settings.bus_options())
    try:
        server, group = f"cons-{suffix}", f"grp-{suffix}"
        argv, env = faulty_mcp(tmp_path / "faulty.sqlite3")
        body = {"name": server, "command": argv[0], "args": argv[1:], "env": env}
        await commands.call(nc, "registry", "add_server", body, 75.0)
        cedar = (
            f'@id("needs-{suffix}") @approval("{group}") @quorum("1")\n'
            'permit(principal, action == Action::"call_tool", resource) '
            f'when {{ resource.server == "{server}" && resource.name == "append_row" }};\n'
        )
        await commands.call(nc, "policy", "load", {"cedar": cedar})
        agent_key, approver_key = generate_key(), generate_key()
        agent_id, approver_id = f"cons-agent-{suffix}", f"cons-appr-{suffix}"
        await commands.call(
            nc, "identity", "register_agent", {"agent_id": agent_id, "public_key": public_key_b64(agent_key)}
        )
        body = {"approver_id": approver_id, "public_key": public_key_b64(approver_key), "groups": [group]}
        await commands.call(nc, "identity", "register_approver", body)
        submission = await WritAgent(nc, agent_id, agent_key).submit(f"{server}/append_row", {"token": suffix})

        rows: list[dict[str, Any]] = []
        for _ in range(100):
            auth = {"Authorization": auth_header(approver_key, approver_id, "GET", "/approvals")}
            status, headers, raw = await fetch(plane, "GET", "/approvals", headers=auth)
            assert status == 200, raw
            rows = [r for r in json.loads(raw)["approvals"] if r["intent_id"] == submission.intent_id]
            if rows:
                break
            await asyncio.sleep(0.1)
        assert rows and rows[0]["arguments"] == {"token": suffix}
        assert headers["cache-control"] == "no-store"
        status, _, _ = await fetch(plane, "GET", "/approvals")
        assert status == 401  # the ledger serves the approvals API with its own authentication

        token = "wv_" + secrets.token_urlsafe(24)
        digest = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
        await commands.call(nc, "identity", "issue_reader_token", {"name": f"c-{suffix}", "token_hash": digest})
        denied = await WritAgent(nc, agent_id, agent_key).submit(f"{server}/crash", {})
        await wait_receipt(nc, denied.intent_id, timeout=30)
        detail: dict[str, Any] = {}
        for _ in range(100):
            status, _, raw = await fetch(
                plane, "GET", f"/intents/{denied.intent_id}", headers={"Authorization": f"Bearer {token}"}
            )
            detail = json.loads(raw)
            if status == 200 and detail.get("receipt"):
                break
            await asyncio.sleep(0.1)
        check = detail["verification"]
        assert check["hash_ok"] and check["signature_ok"] and check["chain_ok"] is not False, check
        assert check["problem"] is None
    finally:
        await nc.close()
