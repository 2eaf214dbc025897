"""The approvals HTTP API (uvicorn on loopback) against the session's running plane: signed requests only,
each approver sees and decides only its groups' requests, and a decision it posts completes the intent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
import uvicorn
from nacl.signing import SigningKey
from nats.aio.client import Client

from waiting import eventually, wait_until
from writ.approvals_api import auth_header, build_app
from writ.approver import signed_decision
from writ.runtime.processes import free_port
from writ.runtime.supervisor import Plane
from writ.sdk import WritAgent, wait_receipt
from writ_common import commands
from writ_common.signing import generate_key, public_key_b64

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SIGNED_FIELDS = ("decision", "approval_digest", "signed_at", "comment", "signature")


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the test runner keeps Ctrl-C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class Approver:
    name: str
    key: SigningKey


@dataclass(frozen=True)
class Rig:
    url: str
    nc: Client
    agent: WritAgent
    server: str
    ops: Approver  # decides append_row
    fin: Approver  # decides put


def policy(server: str, ops: str, fin: str) -> str:
    """append_row needs group ``ops``, put needs group ``fin`` (fresh group names: the plane is shared)."""
    call = 'permit(principal, action == Action::"call_tool", resource)'
    return (
        f'@id("read-only-tools")\n{call} when {{ resource.read_only }};\n'
        f'@id("append-needs-ops") @approval("{ops}") @quorum("1")\n'
        f'{call} when {{ resource.server == "{server}" && resource.name == "append_row" }};\n'
        f'@id("put-needs-fin") @approval("{fin}") @quorum("1")\n'
        f'{call} when {{ resource.server == "{server}" && resource.name == "put" }};\n'
    )


async def register_approver(nc: Client, name: str, group: str) -> Approver:
    key = generate_key()
    body = {"approver_id": name, "public_key": public_key_b64(key), "groups": [group]}
    await commands.call(nc, "identity", "register_approver", body)
    return Approver(name, key)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rig(
    plane: Plane,
    tmp_path_factory: pytest.TempPathFactory,
    faulty_mcp: Callable[[Path], tuple[list[str], dict[str, str]]],
) -> AsyncIterator[Rig]:
    suffix = uuid.uuid4().hex[:8]
    nc = await nats.connect(plane.nats_url, **plane.settings.bus_options())
    server_task: asyncio.Task[None] | None = None
    try:
        server = f"faulty-api-{suffix}"
        argv, env = faulty_mcp(tmp_path_factory.mktemp("approvals-api") / "faulty.sqlite3")
        await commands.call(
            nc, "registry", "add_server", {"name": server, "command": argv[0], "args": argv[1:], "env": env}, 75.0
        )
        ops_group, fin_group = f"ops-{suffix}", f"fin-{suffix}"
        await commands.call(nc, "policy", "load", {"cedar": policy(server, ops_group, fin_group)})
        agent_key = generate_key()
        agent_id = f"api-agent-{suffix}"
        await commands.call(
            nc, "identity", "register_agent", {"agent_id": agent_id, "public_key": public_key_b64(agent_key)}
        )
        ops = await register_approver(nc, f"olga-{suffix}", ops_group)
        fin = await register_approver(nc, f"finn-{suffix}", fin_group)

        port = free_port()
        api = _Server(
            uvicorn.Config(
                build_app(plane.nats_url, plane.settings.bus_options()),
                host="127.0.0.1",
                port=port,
                log_level="warning",
            )
        )
        server_task = asyncio.create_task(api.serve())

        def started() -> bool:
            assert not server_task.done(), "the API server stopped during start-up"
            return bool(api.started)

        await wait_until(started, 10, "the approvals API started")
        yield Rig(f"http://127.0.0.1:{port}", nc, WritAgent(nc, agent_id, agent_key), server, ops, fin)
        api.should_exit = True
        await asyncio.wait_for(server_task, 10)
    finally:
        if server_task is not None and not server_task.done():
            server_task.cancel()
        await nc.close()


def _http(url: str, method: str, headers: dict[str, str], body: bytes | None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def http(
    rig: Rig,
    method: str,
    path: str,
    *,
    who: Approver | None = None,
    body: dict[str, Any] | None = None,
    authorization: str | None = None,
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    elif who is not None:
        headers["Authorization"] = auth_header(who.key, who.name, method, path)
    data = json.dumps(body).encode() if body is not None else None
    return await asyncio.to_thread(_http, rig.url + path, method, headers, data)


async def requested(rig: Rig, tool: str, arguments: dict[str, Any], who: Approver) -> dict[str, Any]:
    """Submit a call needing approval; return the request once ``who`` can see it through the API."""
    submission = await rig.agent.submit(f"{rig.server}/{tool}", arguments)

    async def listed() -> dict[str, Any] | None:
        status, body = await http(rig, "GET", "/approvals", who=who)
        assert status == 200, body
        return next((dict(r) for r in body["approvals"] if r["intent_id"] == submission.intent_id), None)

    return await eventually(listed, 10, f"an approval request for {submission.intent_id}")


def decision(who: Approver, request: dict[str, Any], verdict: str, comment: str = "") -> dict[str, Any]:
    signed = signed_decision(who.key, who.name, request, verdict, comment)  # type: ignore[arg-type]
    return {field: signed[field] for field in SIGNED_FIELDS}


async def test_requests_without_a_valid_signature_get_401(rig: Rig) -> None:
    now = time.time()
    stranger = generate_key()
    cases = {
        "missing": None,
        "not our scheme": "Bearer abc",
        "malformed": "Writ-Ed25519 nonsense",
        "another key": auth_header(stranger, rig.ops.name, "GET", "/approvals"),
        "another path": auth_header(rig.ops.key, rig.ops.name, "GET", "/approvals/in-other"),
        "another method": auth_header(rig.ops.key, rig.ops.name, "POST", "/approvals"),
        "too old": auth_header(rig.ops.key, rig.ops.name, "GET", "/approvals", now=now - 360),
        "too far ahead": auth_header(rig.ops.key, rig.ops.name, "GET", "/approvals", now=now + 360),
        "unknown approver": auth_header(stranger, f"nobody-{uuid.uuid4().hex[:6]}", "GET", "/approvals"),
    }
    for what, header in cases.items():
        status, body = await http(rig, "GET", "/approvals", authorization=header or "")
        assert status == 401, (what, body)
        assert set(body) == {"error", "message"}, (what, body)
    expected = {
        "missing": "unauthenticated",
        "another key": "bad_signature",
        "too old": "clock_skew",
        "unknown approver": "unknown_approver",
    }
    for what, code in expected.items():
        header = cases[what]
        _, body = await http(rig, "GET", "/approvals", authorization=header or "")
        assert body["error"] == code, (what, body)


async def test_each_approver_sees_only_its_groups_requests_and_gets_403_on_others(rig: Rig) -> None:
    token = f"t-{uuid.uuid4().hex[:8]}"
    append = await requested(rig, "append_row", {"token": token}, rig.ops)
    put = await requested(rig, "put", {"key": token, "value": "v"}, rig.fin)

    _, seen_by_ops = await http(rig, "GET", "/approvals", who=rig.ops)
    _, seen_by_fin = await http(rig, "GET", "/approvals", who=rig.fin)
    ops_ids = {r["intent_id"] for r in seen_by_ops["approvals"]}
    fin_ids = {r["intent_id"] for r in seen_by_fin["approvals"]}
    assert append["intent_id"] in ops_ids and put["intent_id"] not in ops_ids
    assert put["intent_id"] in fin_ids and append["intent_id"] not in fin_ids
    assert {r["approvers"] for r in seen_by_ops["approvals"]} == {append["approvers"]}

    status, shown = await http(rig, "GET", f"/approvals/{append['intent_id']}", who=rig.ops)
    assert status == 200, shown
    assert shown["tool"] == f"{rig.server}/append_row" and shown["arguments"] == {"token": token}
    assert shown["approval_digest"] == append["approval_digest"]

    path = f"/approvals/{append['intent_id']}"
    status, body = await http(rig, "GET", path, who=rig.fin)
    assert (status, body["error"]) == (403, "not_in_group"), body
    status, body = await http(rig, "POST", f"{path}/decision", who=rig.fin, body=decision(rig.fin, append, "grant"))
    assert (status, body["error"]) == (403, "not_in_group"), body
    status, still = await http(rig, "GET", path, who=rig.ops)
    assert status == 200 and still["status"] == "awaiting_approval" and still["granted_by"] == [], still

    # Clean up: both end denied, through the API.
    for who, request in ((rig.ops, append), (rig.fin, put)):
        denial = decision(who, request, "deny", "test over")
        status, outcome = await http(rig, "POST", f"/approvals/{request['intent_id']}/decision", who=who, body=denial)
        assert (status, outcome["outcome"]) == (200, "denied"), outcome


async def test_a_posted_grant_authorizes_the_intent_and_it_succeeds(rig: Rig) -> None:
    token = f"t-{uuid.uuid4().hex[:8]}"
    request = await requested(rig, "append_row", {"token": token}, rig.ops)
    path = f"/approvals/{request['intent_id']}/decision"

    status, body = await http(rig, "POST", path, who=rig.ops, body={"decision": "maybe"})
    assert (status, body["error"]) == (400, "invalid_request"), body
    tampered = {**decision(rig.ops, request, "grant"), "comment": "changed after signing"}
    status, body = await http(rig, "POST", path, who=rig.ops, body=tampered)
    assert (status, body["error"]) == (400, "bad_signature"), body

    status, outcome = await http(rig, "POST", path, who=rig.ops, body=decision(rig.ops, request, "grant", "ok"))

    assert status == 200, outcome
    assert outcome["outcome"] == "authorized"
    assert outcome["granted_by"] == [rig.ops.name]
    receipt = await wait_receipt(rig.nc, request["intent_id"], timeout=60)
    assert receipt.status == "succeeded", receipt
    assert token in json.dumps(receipt.result)
    status, body = await http(rig, "POST", path, who=rig.ops, body=decision(rig.ops, request, "grant"))
    assert (status, body["error"]) == (409, "not_pending"), body


async def test_openapi_describes_the_routes(rig: Rig) -> None:
    status, spec = await http(rig, "GET", "/openapi.json")

    assert status == 200
    assert set(spec["paths"]) == {
        "/approvals",
        "/approvals/stream",
        "/approvals/{intent_id}",
        "/approvals/{intent_id}/decision",
    }
    assert "DecisionBody" in spec["components"]["schemas"]


async def _inbox_frames(rig: Rig, who: Approver, frames: list[dict[str, Any]], stop: Callable[[], bool]) -> None:
    """Read the ``approvals`` events of ``who``'s inbox stream into ``frames`` until ``stop()`` (20 s
    at most). HTTP/1.0, so the body is the stream itself, not chunks."""
    path = "/approvals/stream"
    host, port = rig.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    authorization = auth_header(who.key, who.name, "GET", path)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nAuthorization: {authorization}\r\n\r\n".encode())
    deadline = time.monotonic() + 20
    event = ""
    try:
        assert (await reader.readline()).startswith(b"HTTP/1.1 200"), "the stream was refused"
        while not stop() and time.monotonic() < deadline:
            try:
                line = (await asyncio.wait_for(reader.readline(), 0.2)).decode().rstrip("\r\n")
            except TimeoutError:
                continue
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "approvals":
                frames.append(json.loads(line.removeprefix("data: ")))
    finally:
        writer.close()


async def test_the_inbox_stream_pushes_a_new_request_to_its_group_only(rig: Rig) -> None:
    path = "/approvals/stream"
    wrong = auth_header(rig.ops.key, rig.ops.name, "GET", "/approvals")  # signed for another path
    status, body = await http(rig, "GET", path, authorization=wrong)
    assert (status, body["error"]) == (401, "bad_signature")

    ops_frames: list[dict[str, Any]] = []
    fin_frames: list[dict[str, Any]] = []
    intent: list[str] = []

    def ops_saw_it() -> bool:
        return bool(intent) and any(r["intent_id"] == intent[0] for f in ops_frames for r in f["approvals"])

    ops = asyncio.create_task(_inbox_frames(rig, rig.ops, ops_frames, ops_saw_it))
    grace_over: list[bool] = []  # fin's stream is read on for a second after ops had the request
    fin = asyncio.create_task(_inbox_frames(rig, rig.fin, fin_frames, lambda: bool(grace_over)))
    for _ in range(200):  # both streams sent their first reading
        if ops_frames and fin_frames:
            break
        await asyncio.sleep(0.05)
    submission = await rig.agent.submit(f"{rig.server}/append_row", {"token": uuid.uuid4().hex})
    intent.append(submission.intent_id)
    await asyncio.wait_for(ops, 25)
    assert ops_saw_it(), ops_frames  # pushed, with no request from the client after the first
    await asyncio.sleep(1.0)
    grace_over.append(True)
    await asyncio.wait_for(fin, 25)
    assert not any(r["intent_id"] == submission.intent_id for f in fin_frames for r in f["approvals"])
    request = next(r for f in ops_frames for r in f["approvals"] if r["intent_id"] == submission.intent_id)
    status, body = await http(rig, "POST", f"/approvals/{submission.intent_id}/decision", who=rig.ops,
                              body=decision(rig.ops, request, "deny"))  # fmt: skip
    assert status == 200, body
