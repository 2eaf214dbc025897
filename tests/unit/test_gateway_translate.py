"""The MCP gateway's decisions as plain values: names, the tool list, and what a receipt answers."""

from __future__ import annotations

from typing import Any

import mcp_types as types
import pytest

from writ.gateway.translate import (
    IDEMPOTENCY_META_KEY,
    MODEL_TOOL_NAME,
    Naming,
    call_result,
    callable_tools,
    idempotency_key,
    listing,
    mcp_tool_name,
    pending_result,
    renamed,
    upstream_error,
)
from writ_common.digest import tool_digest
from writ_common.events import Receipt
from writ_common.mcp_client import definition_of

pytestmark = pytest.mark.unit


def row(server: str, name: str, status: str = "accepted", description: str = "d") -> dict[str, Any]:
    return {
        "server": server,
        "name": name,
        "description": description,
        "status": status,
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
        "annotations": {"read_only": True, "destructive": False, "idempotent": True, "open_world": False},
    }


def receipt(status: str, code: str, reason: str, result: dict[str, Any] | None = None) -> Receipt:
    stage = "execute" if status in ("succeeded", "failed") else "plan"
    return Receipt(
        position=1, intent_id="in-abc", agent_id="bot", status=status, stage=stage, code=code, reason=reason,  # type: ignore[arg-type]
        result=result, event_ids=["e"], recorded_at="2026-01-01T00:00:00Z", ledger_key_id="k", prev_hash="0",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("server", "tool"), [("time", "get_current_time"), ("a-b_c", "x.y"), ("s1", "with.dots.and-dashes")]
)
def test_prefixed_tool_names_are_model_safe(server: str, tool: str) -> None:
    name = mcp_tool_name(server, tool)
    assert name == f"{server}__{tool}" and "/" not in name
    if MODEL_TOOL_NAME.fullmatch(tool):  # what Writ adds never makes a name a model API refuses
        assert MODEL_TOOL_NAME.fullmatch(name)
    assert mcp_tool_name(server, tool, Naming(separator=".")) == f"{server}.{tool}"


def test_names_mcp_cannot_carry_are_not_offered() -> None:
    assert mcp_tool_name("s", "has space") is None
    assert mcp_tool_name("s", "a/b") is None
    assert mcp_tool_name("s", "x" * 126) is None  # 129 characters with "s__"


def test_only_accepted_tools_without_a_waiting_version_are_listed() -> None:
    rows = [row("a", "kept"), row("a", "changed"), row("a", "changed", "quarantined"), row("b", "new", "quarantined")]
    tools = callable_tools(rows)
    assert [t.name for t in tools] == ["kept"]
    assert tools[0].input_schema["properties"] == {"q": {"type": "string"}}
    assert tools[0].title is None  # nothing Writ made up
    # A row pinned before Writ kept the server's own listing shows what Writ kept.
    assert tools[0].annotations == types.ToolAnnotations(
        read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
    )


def test_a_name_is_the_servers_own_unless_two_servers_offer_it() -> None:
    rows = [row("a", "search"), row("b", "search"), row("a", "only_a"), row("c", "only_c", "quarantined")]
    listed = listing(rows)
    assert [t.name for t in listed.tools] == ["a__search", "b__search", "only_a"]
    assert listed.writ_name("only_a") == listed.writ_name("a__only_a") == "a/only_a"  # both spellings
    assert listed.writ_name("a__search") == listed.writ_name("a.search") == "a/search"
    assert listed.writ_name("search") is None
    assert listed.tools[0].meta == {"writ/tool": "a/search"}
    assert listed.digest != listing(rows[1:]).digest and listed.digest == listing(rows).digest


def test_the_listing_is_the_tool_as_its_server_listed_it() -> None:
    server_tool = types.Tool(
        name="shaped",
        title="A shaped tool",
        description="d",
        input_schema={"type": "object"},
        output_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
        icons=[types.Icon(src="data:image/png;base64,AA==", mime_type="image/png")],
        annotations=types.ToolAnnotations(read_only_hint=True),
        meta={"example.com/k": 1},
    )
    definition = definition_of(server_tool)
    shown = listing([{**row("srv", "shaped"), "listed": definition.listed}]).tools[0]
    assert shown.model_dump(exclude={"meta"}) == server_tool.model_dump(exclude={"meta"})
    assert shown.annotations == types.ToolAnnotations(read_only_hint=True)  # no defaults filled in
    assert shown.meta == {"example.com/k": 1, "writ/tool": "srv/shaped"}
    # The digest binds what the listing shows; a tool with nothing more than before keeps its digest.
    plain = types.Tool(name="plain", input_schema={"type": "object"})
    assert definition_of(plain).tool_digest == tool_digest(
        name="plain", description=None, input_schema={"type": "object"}, output_schema=None, annotations=None
    )
    assert definition.tool_digest != definition_of(server_tool.model_copy(update={"title": "Other"})).tool_digest


def test_the_callers_idempotency_key_is_used_else_a_fresh_one() -> None:
    assert idempotency_key({IDEMPOTENCY_META_KEY: "run-1"}) == "run-1"
    assert idempotency_key(None) != idempotency_key({})
    assert idempotency_key({IDEMPOTENCY_META_KEY: 7}) is None
    assert idempotency_key({IDEMPOTENCY_META_KEY: ""}) is None


def test_a_success_is_the_tools_own_result() -> None:
    tool_result = {"content": [{"type": "text", "text": "12:00"}], "structuredContent": {"time": "12:00"}}
    answer = call_result(receipt("succeeded", "ok", "ran", tool_result), "k1")
    assert not answer.is_error
    assert answer.content == [types.TextContent(text="12:00")] and answer.structured_content == {"time": "12:00"}
    assert answer.meta == {
        "writ/status": "succeeded", "writ/code": "ok", "writ/intent_id": "in-abc", IDEMPOTENCY_META_KEY: "k1",
        "writ/stage": "execute", "writ/reason": "ran",
    }  # fmt: skip


def test_a_refusal_is_an_error_naming_status_code_reason_and_intent() -> None:
    answer = call_result(receipt("denied", "forbidden", "forbidden: policy no-convert forbids it"), "k1")
    assert answer.is_error
    assert isinstance(answer.content[0], types.TextContent)
    text = answer.content[0].text
    assert "denied" in text and "(forbidden)" in text and "policy no-convert forbids it" in text and "in-abc" in text
    assert "forbidden: forbidden" not in text


def test_an_overloaded_answer_says_when_to_call_again_in_text_and_meta() -> None:
    reason = "overloaded: ocr/read has 1 call in flight, its limit now; the call did not run; retry after 480 ms"
    answer = call_result(receipt("failed", "overloaded", reason, {"retry_after_ms": 480, "route": "ocr/read"}), "k1")
    assert answer.is_error and isinstance(answer.content[0], types.TextContent)
    assert "did not run" in answer.content[0].text and "retry after 480 ms" in answer.content[0].text
    assert answer.meta is not None and answer.meta["writ/retry_after_ms"] == 480
    refused = call_result(receipt("denied", "forbidden", "forbidden: no", {"retry_after_ms": 5}), "k1")
    assert refused.meta is not None and "writ/retry_after_ms" not in refused.meta, "only an overloaded answer"


def test_a_tool_error_is_the_tools_own_result_with_nothing_of_writs_before_it() -> None:
    tool_result = {"content": [{"type": "text", "text": "boom"}], "isError": True, "_meta": {"tool/k": 1}}
    answer = call_result(receipt("failed", "tool_error", "tool_error: boom", tool_result), "k1")
    assert answer.is_error and answer.content == [types.TextContent(text="boom")]
    assert answer.meta is not None and answer.meta["tool/k"] == 1
    assert (answer.meta["writ/status"], answer.meta["writ/code"], answer.meta["writ/stage"]) == (
        "failed", "tool_error", "execute",
    )  # fmt: skip
    assert upstream_error(receipt("failed", "tool_error", "tool_error: boom", tool_result), "k1") is None


def test_a_servers_json_rpc_error_is_passed_on_with_its_code() -> None:
    refused = {"error": {"code": -32602, "message": "no such thing", "data": {"why": "x"}}}
    error = upstream_error(
        receipt("failed", "mcp_error", "mcp_error: 's' refused the call: no such thing", refused), "k1"
    )
    assert error == types.ErrorData(code=-32602, message="no such thing", data={"why": "x"})
    bare = upstream_error(receipt("failed", "mcp_error", "mcp_error: no", {"error": {"code": 7, "message": "no"}}), "k")
    assert bare is not None and bare.code == 7 and bare.data["writ/intent_id"] == "in-abc"
    # Writ's own ends are never a JSON-RPC error: one text, isError.
    assert upstream_error(receipt("denied", "forbidden", "forbidden: no", None), "k1") is None
    unavailable = call_result(receipt("failed", "server_unavailable", "server_unavailable: down"), "k1")
    assert unavailable.is_error and len(unavailable.content) == 1


def test_pending_says_how_to_reattach() -> None:
    answer = pending_result("in-abc", "k1", 3, awaiting_approval=True)
    assert answer.is_error and isinstance(answer.content[0], types.TextContent)
    assert (
        "awaiting human approval" in answer.content[0].text and '"writ/idempotency_key": "k1"' in answer.content[0].text
    )


def test_prefixed_names_never_change_when_a_server_is_added() -> None:
    alone = listing([row("a", "search")], Naming(prefixed=True))
    both = listing([row("a", "search"), row("b", "search")], Naming(prefixed=True))
    assert [t.name for t in alone.tools] == ["a__search"]
    assert [t.name for t in both.tools] == ["a__search", "b__search"]
    assert renamed(alone, both) == []


def test_by_default_a_name_that_becomes_ambiguous_is_said_renamed() -> None:
    alone = listing([row("a", "search")])
    both = listing([row("a", "search"), row("b", "search")])
    assert renamed(alone, both) == [("a/search", "search", "a__search")]


def test_an_alias_names_a_servers_tools_and_reads_back_to_the_server() -> None:
    naming = Naming(prefixed=True, aliases={"salesforce-prod": "crm"})
    listed = listing([row("salesforce-prod", "search"), row("b", "search")], naming)
    assert [t.name for t in listed.tools] == ["crm__search", "b__search"]
    assert listed.writ_name("crm__search") == "salesforce-prod/search"
    dotted = listing([row("salesforce-prod", "search")], Naming(prefixed=True, aliases=naming.aliases, separator="."))
    assert [t.name for t in dotted.tools] == ["crm.search"]


def test_an_alias_that_is_no_name_or_stands_for_two_servers_is_refused() -> None:
    assert Naming(aliases={"a": "crm", "b": "crm_eu-1"}).refusal() is None
    for bad in ("c.r", "c__r", "crm_", "_crm", "", "x" * 33):
        assert "no '.', no '__'" in (Naming(aliases={"a": bad}).refusal() or ""), bad
    assert "both" in (Naming(aliases={"a": "crm", "b": "crm"}).refusal() or "")
    assert "separator" in (Naming(separator="/").refusal() or "")
