"""Governed MCP operations beyond tools/call (read_resource, get_prompt, complete, subscribe): what
the registry plans, what policy decides and on which Cedar entity, what the agent signs, and what
the gateway lists. Pure functions only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from test_rules import AGENT, ARGS_KEY, KEY, SKEW, view_of

from writ.gateway.translate import offered, template_pattern
from writ.sdk import new_intent, sign_intent
from writ_common import events as ev
from writ_common import operations
from writ_common.catalog import Catalog
from writ_common.digest import canonical_json
from writ_identity.domain import check_intent
from writ_policy.domain import compile_bundle, decide
from writ_policy.schema import cedar_schema, validation_errors
from writ_registry.domain import Validators, plan

pytestmark = pytest.mark.unit


def asked(operation: str, target: str, arguments: dict[str, Any] | None = None) -> ev.IntentSubmitted:
    return sign_intent(new_intent("bot", target, arguments or {}, operation=operation), KEY)


def catalog() -> Catalog:
    registered = Catalog()
    registered.servers["docs"] = ev.ServerRegistered(name="docs", transport="http", url="http://127.0.0.1:1/mcp")
    return registered


def planned(intent: ev.IntentSubmitted) -> ev.IntentPlanned | ev.IntentRejected:
    return plan(view_of(intent), catalog(), Validators(), args_key=ARGS_KEY)


class TestSigning:
    def test_a_tool_call_signs_the_fields_it_always_did(self) -> None:
        intent = new_intent("bot", "time/get_current_time", {})
        assert "operation" not in intent.signed_fields()

    def test_the_operation_is_signed_and_cannot_be_changed_after(self) -> None:
        intent = asked("read_resource", "docs/test://a")
        assert intent.signed_fields()["operation"] == "read_resource"
        assert check_intent(view_of(intent), AGENT, now=datetime.now(UTC), clock_skew=SKEW) is None
        fields = {f: getattr(intent, f) for f in intent.__struct_fields__}
        changed = ev.IntentSubmitted(**{**fields, "operation": "subscribe_resource"})
        assert canonical_json(changed.signed_fields()) != canonical_json(intent.signed_fields())
        rejection = check_intent(view_of(changed), AGENT, now=datetime.now(UTC), clock_skew=SKEW)
        assert rejection is not None and rejection.code == "bad_signature"


class TestPlan:
    def test_a_resource_read_is_planned_on_its_server_with_its_uri(self) -> None:
        decision = planned(asked("read_resource", "docs/test://template/7/data"))
        assert isinstance(decision, ev.IntentPlanned)
        assert (decision.server, decision.tool) == ("docs", "test://template/7/data")
        assert decision.annotations.read_only and not decision.annotations.destructive
        assert decision.tool_digest.startswith("sha256:")

    def test_a_subscription_changes_the_server_so_it_is_not_read_only(self) -> None:
        decision = planned(asked("subscribe_resource", "docs/test://a"))
        assert isinstance(decision, ev.IntentPlanned) and not decision.annotations.read_only

    @pytest.mark.parametrize(
        ("operation", "target", "arguments", "code"),
        [
            ("read_resource", "nowhere/test://a", {}, "unknown_server"),
            ("read_resource", "docs/", {}, "invalid_target"),
            ("read_resource", "docs/test://a", {"extra": 1}, "invalid_arguments"),
            ("get_prompt", "docs/p", {"arguments": {"n": 1}}, "invalid_arguments"),
            (
                "complete",
                "docs/p",
                {"ref_type": "ref/tool", "argument": {"name": "a", "value": "b"}},
                "invalid_arguments",
            ),
            ("complete", "docs/p", {"ref_type": "ref/prompt", "argument": {"name": "a"}}, "invalid_arguments"),
            ("delete_everything", "docs/x", {}, "unknown_operation"),
        ],
    )
    def test_bad_requests_are_rejected_at_plan_with_a_code(
        self, operation: str, target: str, arguments: dict[str, Any], code: str
    ) -> None:
        decision = planned(asked(operation, target, arguments))
        assert isinstance(decision, ev.IntentRejected) and decision.code == code, decision

    def test_the_mcp_request_of_each_operation(self) -> None:
        assert operations.request_params("read_resource", "test://a", {}) == {"uri": "test://a"}
        assert operations.request_params("get_prompt", "p", {"arguments": {"a": "1"}}) == {
            "name": "p",
            "arguments": {"a": "1"},
        }
        completion = {"ref_type": "ref/resource", "argument": {"name": "id", "value": "1"}}
        assert operations.request_params("complete", "test://t/{id}", completion) == {
            "ref": {"type": "ref/resource", "uri": "test://t/{id}"},
            "argument": {"name": "id", "value": "1"},
        }


POLICY = """
@id("read-docs")
permit(principal, action in [Action::"read_resource", Action::"get_prompt", Action::"complete"], resource)
    when { resource.server == "docs" };
@id("no-secrets")
forbid(principal, action == Action::"read_resource", resource is Resource)
    when { resource.uri like "test://secret*" };
"""


def decided(intent: ev.IntentSubmitted, cedar: str = POLICY) -> ev.Payload:
    plan_event = planned(intent)
    assert isinstance(plan_event, ev.IntentPlanned), plan_event
    view = view_of(intent, ev.IntentAuthenticated(key_id="k"), plan_event)
    return decide(view, compile_bundle(cedar), now=datetime.now(UTC))


class TestPolicy:
    def test_each_operation_is_its_own_cedar_action(self) -> None:
        assert isinstance(decided(asked("read_resource", 'docs/test://a"quoted"')), ev.IntentAuthorized)
        assert isinstance(decided(asked("get_prompt", "docs/greet")), ev.IntentAuthorized)
        completion = {"ref_type": "ref/prompt", "argument": {"name": "a", "value": "b"}}
        assert isinstance(decided(asked("complete", "docs/greet", completion)), ev.IntentAuthorized)
        # Permitted for reading, not for subscribing: no permit names that action.
        denied = decided(asked("subscribe_resource", "docs/test://a"))
        assert isinstance(denied, ev.IntentDenied) and denied.code == "no_permit"
        assert "subscribe_resource docs/test://a" in denied.reason

    def test_any_resource_uri_reaches_cedar_as_it_is(self) -> None:
        # Ids go to Cedar as {type, id}: no surface syntax, so no quoting to get wrong, and ids
        # Cedar's parser would refuse (a newline, a backslash) are decided like any other.
        for uri in ('test://a"b', "test://a\\b", "test://a\nb", "test://ünï"):
            assert isinstance(decided(asked("read_resource", f"docs/{uri}")), ev.IntentAuthorized), uri
        denied = decided(asked("read_resource", "docs/test://secret\n/key"))
        assert isinstance(denied, ev.IntentDenied) and denied.policy_ids == ["no-secrets"]

    def test_a_forbidden_resource_read_is_denied_naming_the_policy(self) -> None:
        denied = decided(asked("read_resource", "docs/test://secret/key"))
        assert isinstance(denied, ev.IntentDenied) and denied.code == "forbidden"
        assert denied.policy_ids == ["no-secrets"]

    def test_the_default_read_only_tool_permit_does_not_open_resources(self) -> None:
        tools_only = '@id("ro") permit(principal, action == Action::"call_tool", resource) when { resource.read_only };'
        denied = decided(asked("read_resource", "docs/test://a"), tools_only)
        assert isinstance(denied, ev.IntentDenied) and denied.code == "no_permit"

    def test_policies_on_operations_validate_and_unscoped_ones_still_do(self) -> None:
        schema = cedar_schema([])
        assert validation_errors(POLICY, {"policy0": "read-docs", "policy1": "no-secrets"}, schema) == []
        unscoped = '@id("u") forbid(principal, action, resource) when { resource.destructive };'
        assert validation_errors(unscoped, {"policy0": "u"}, schema) == []
        typo = '@id("t") forbid(principal, action == Action::"read_resource", resource) when { resource.url == "x" };'
        assert validation_errors(typo, {"policy0": "t"}, schema) != []


class TestGatewayListing:
    def test_resources_templates_and_prompts_are_listed_with_their_server(self) -> None:
        listing = offered(
            [{"server": "a", "items": [{"uri": "test://x", "name": "x"}]}, {"server": "b", "items": []}],
            [{"server": "b", "items": [{"uriTemplate": "test://t/{id}/data", "name": "t"}]}],
            [
                {"server": "a", "items": [{"name": "greet"}, {"name": "only_a"}]},
                {"server": "b", "items": [{"name": "greet"}]},
            ],
        )
        assert listing.server_of_uri("test://x") == "a"
        assert listing.server_of_uri("test://t/42/data") == "b"
        assert listing.server_of_uri("test://t/42/other") is None
        assert listing.server_of_template("test://t/{id}/data") == "b"
        assert listing.resources[0].meta == {"writ/server": "a"}
        # A prompt name two servers offer is listed as SERVER.NAME by each; a unique one as it is.
        assert sorted(listing.prompt_names) == ["a__greet", "b__greet", "only_a"]
        assert listing.prompt_names["b__greet"] == ("b", "greet")

    def test_a_template_variable_never_spans_a_path_segment(self) -> None:
        pattern = template_pattern("file:///{dir}/{name}.txt")
        assert pattern.fullmatch("file:///docs/readme.txt")
        assert not pattern.fullmatch("file:///docs/more/readme.txt")


class TestReceipt:
    def test_the_receipt_names_the_operation_and_a_tool_calls_hash_is_unchanged(self) -> None:
        fields: dict[str, Any] = {
            "position": 1,
            "intent_id": "in-x",
            "agent_id": "bot",
            "status": "succeeded",
            "stage": "execute",
            "code": "ok",
            "reason": "",
            "event_ids": [],
            "recorded_at": "2026-01-01T00:00:00Z",
            "ledger_key_id": "k",
            "prev_hash": "",
        }
        assert "operation" not in ev.Receipt(**fields).hashed_fields()
        read = ev.Receipt(**fields, operation="read_resource")
        assert read.hashed_fields()["operation"] == "read_resource"
