"""A candidate bundle tried before it is enforced: replayed over the recorded intents (`writ policy
simulate`), then evaluated beside the enforced bundle on live decisions (`--shadow`), which it never
changes; enforced at last, it decides what the simulation said it would."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from scene import Scene

from writ_common import commands
from writ_common import events as ev

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]


def permit(server: str, *tools: str) -> str:
    return "".join(
        f'@id("permit-{t}")\npermit(principal, action == Action::"call_tool", resource == Tool::"{server}/{t}");\n'
        for t in tools
    )


def forbid(server: str, tool: str) -> str:
    return f'@id("no-{tool}")\nforbid(principal, action == Action::"call_tool", resource == Tool::"{server}/{tool}");\n'


def http(url: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def reader(scene: Scene, scope: str) -> str:
    value = "writv_" + secrets.token_urlsafe(32)
    body = {"name": f"whatif-{scope}-{secrets.token_hex(3)}", "scope": scope}
    body["token_hash"] = "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    await commands.call(scene.operator, "identity", "issue_reader_token", body)
    return value


async def calls(scene: Scene) -> dict[str, str]:
    """append_row and count, each to its end: tool -> intent id."""
    ids = {}
    for tool, args in (("append_row", {"token": uuid.uuid4().hex[:6]}), ("count", {})):
        submitted = await scene.agent.submit(f"{scene.server}/{tool}", args)
        await scene.receipt(submitted.intent_id)
        ids[tool] = submitted.intent_id
    return ids


async def test_simulate_then_shadow_then_enforce_agree(scene: Scene, tmp_path: Path) -> None:
    agent = scene.agent.agent_id
    await scene.load_policy(permit(scene.server, "append_row", "count"), tmp_path)
    before = await calls(scene)
    candidate = tmp_path / "candidate.cedar"
    candidate.write_text(permit(scene.server, "append_row", "count") + forbid(scene.server, "append_row"))

    out = await scene.ok("policy", "simulate", str(candidate), "--agent", agent, "--since", "1h", "--json")
    diff = json.loads(out)
    assert diff["validation_errors"] == []
    assert (diff["evaluated"], diff["changed"]) == (2, 1), diff
    (change,) = diff["changes"]
    assert (change["from"], change["to"], change["count"]) == ("allow", "deny", 1)
    assert (change["by_agent"], change["by_policy"]) == ({agent: 1}, {"no-append_row": 1})
    assert change["examples"] == [before["append_row"]]

    # The same from the views API: a summary token reads the counts, a full one the example intents too.
    api, ask = f"http://127.0.0.1:{scene.plane.views_port}", {"cedar": candidate.read_text(), "agent": agent}
    for scope in ("summary", "full"):
        bearer = await reader(scene, scope)
        status, over_http = await asyncio.to_thread(http, f"{api}/policy/simulate", bearer, ask)
        assert status == 200, over_http
        assert [(c["from"], c["to"], c["count"]) for c in over_http["changes"]] == [("allow", "deny", 1)]
        assert over_http["changes"][0].get("examples") == ([before["append_row"]] if scope == "full" else None)

    invalid = tmp_path / "invalid.cedar"
    invalid.write_text('@id("typo")\npermit(principal, action, resource) when { resource.risky };\n')
    refused = await asyncio.to_thread(scene.writ, "policy", "simulate", str(invalid), "--agent", agent)
    assert refused.exit_code == 1, refused.output
    assert refused.output.lstrip().startswith("invalid policy 'typo'"), refused.output

    await scene.ok("policy", "load", str(candidate), "--shadow")
    try:
        shadowed = await calls(scene)
    finally:
        await scene.ok("policy", "shadow", "off")
    for tool, intent_id in shadowed.items():
        receipt = await scene.receipt(intent_id)
        assert receipt.status == "succeeded", (tool, receipt.reason)  # the shadow decided nothing
        records = [e.payload for e in await scene.history(intent_id) if e.type == "policy.shadow_decided"]
        assert len(records) == 1 and isinstance(records[0], ev.PolicyShadowDecided)
        assert records[0].agrees == (tool == "count")
        # The receipt vouches for the intent's course: the advisory record is not part of it.
        assert len(receipt.event_ids) == len(await scene.history(intent_id)) - 1
    views = json.loads(await scene.ok("views", "shadow", "--json", "--limit", "500"))
    (disagreement,) = [d for d in views["disagreements"] if d["agent_id"] == agent]
    assert disagreement["intent_id"] == shadowed["append_row"]
    assert (disagreement["enforced_kind"], disagreement["shadow_kind"]) == ("allow", "deny")

    status, over_http = await asyncio.to_thread(http, f"{api}/shadow?limit=500", await reader(scene, "summary"))
    assert status == 200 and shadowed["append_row"] in [d["intent_id"] for d in over_http["disagreements"]]

    after_off = await calls(scene)
    assert not [e for e in await scene.history(after_off["count"]) if e.type == "policy.shadow_decided"]

    await scene.ok("policy", "load", str(candidate))
    enforced = await calls(scene)
    assert (await scene.receipt(enforced["append_row"])).status == "denied"
    assert (await scene.receipt(enforced["count"])).status == "succeeded"
