"""Summary-scope leaks: an analyst holding a summary views token must not read argument values or
tool output, whether in arguments, results or the ``reason`` of a rejection or failure."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import urllib.error
import urllib.request
from typing import Any

import pytest
from inprocess import DEFAULT_POLICY, Spine

from writ_common import commands, events

pytestmark = pytest.mark.security

CARD = "4111111111111111"
EMAIL = "alice.secret@example.com"


def http(url: str, token: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def token(spine: Spine, scope: str) -> str:
    value = "writv_" + secrets.token_urlsafe(32)
    body = {"name": f"analyst-{scope}-{secrets.token_hex(3)}", "scope": scope}
    body["token_hash"] = "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    await commands.call(spine.nc, "identity", "issue_reader_token", body)
    return value


async def views_of(spine: Spine, intent_id: str, scope: str) -> list[str]:
    """The list page and the intent detail as a ``scope`` token reads them, once projected."""
    bearer = await token(spine, scope)
    for _ in range(200):
        status, detail = await asyncio.to_thread(http, f"{spine.views_url}/intents/{intent_id}", bearer)
        if status == 200 and json.loads(detail)["receipt"] is not None:
            break
        await asyncio.sleep(0.05)
    assert status == 200, detail
    _, listed = await asyncio.to_thread(http, f"{spine.views_url}/intents?limit=20", bearer)
    _, by_reason = await asyncio.to_thread(http, f"{spine.views_url}/intents?reason={CARD[:8]}", bearer)
    return [detail, listed, by_reason]


@pytest.mark.asyncio(loop_scope="session")
async def test_invalid_arguments_reason_names_the_field_not_the_card_number(spine: Spine) -> None:
    receipt = await spine.agent.call("get_current_time", {"timezone": int(CARD)}, timeout=30)
    assert (receipt.status, receipt.code) == ("rejected", "invalid_arguments")
    assert CARD not in receipt.reason
    assert "timezone" in receipt.reason and "type" in receipt.reason, receipt.reason
    for page in await views_of(spine, receipt.intent_id, events.SUMMARY_SCOPE):
        assert CARD not in page


@pytest.mark.asyncio(loop_scope="session")
async def test_tool_error_reason_does_not_carry_tool_output_to_a_summary_token(spine: Spine) -> None:
    await commands.call(spine.nc, "policy", "load", {"cedar": DEFAULT_POLICY})
    receipt = await spine.agent.call("get_current_time", {"timezone": EMAIL}, timeout=30)
    assert (receipt.status, receipt.code) == ("failed", "tool_error"), receipt.reason
    assert EMAIL not in receipt.reason
    for page in await views_of(spine, receipt.intent_id, events.SUMMARY_SCOPE):
        assert EMAIL not in page
    # The tool's own error text is kept, in the result, for a full-scope reader.
    assert receipt.result is not None and EMAIL in json.dumps(receipt.result)
    full_detail = (await views_of(spine, receipt.intent_id, events.FULL_SCOPE))[0]
    assert EMAIL in full_detail


def test_summary_scope_withholds_every_value_bearing_field() -> None:
    from writ_ledger.views.queries import WITHHELD, withhold_content

    detail: dict[str, Any] = {
        "intent": {"intent_id": "in-x", "idempotency_key": EMAIL},
        "events": [
            {"payload": {"arguments": {"card": CARD}}},
            {"payload": {"result": {"content": [{"type": "text", "text": EMAIL}]}, "reason": "tool_error: x"}},
            {"payload": {"comment": f"ok for {EMAIL}", "approval_digest": "sha256:x"}},
            {"payload": {"note": f"reconciled {CARD}"}},
        ],
        "decisions": [],
        "approval": None,
        "executions": [],
        "receipt": {"arguments": {"card": CARD}, "result": {"text": EMAIL}, "reason": "tool_error: x"},
    }
    shown = json.dumps(withhold_content(detail))
    assert CARD not in shown and EMAIL not in shown
    assert WITHHELD in shown
