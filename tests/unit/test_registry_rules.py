"""The registry's rules, reached without a broker or an MCP server: add_server's validation, the
name already taken, the lookups its commands refuse on, the "already planned?" guard, and the
refusals planning turns into rejections (code and ``code: sentence`` reason as before)."""

from __future__ import annotations

from typing import Any

import pytest

from writ.sdk import new_intent, sign_intent
from writ_common import events as ev
from writ_common import operations
from writ_common.catalog import Catalog
from writ_common.envelope import Producer, StoredEvent, decode, encode, make_envelope
from writ_common.errors import Refusal
from writ_common.fold import IntentView, fold_intent
from writ_common.ids import derive_intent_id
from writ_common.signing import generate_key
from writ_registry import domain

pytestmark = pytest.mark.unit

PRODUCER = Producer(service="test", instance="t", version="0")
KEY = generate_key()
ARGS_KEY = b"k" * 32


def stored(payload: ev.Payload, intent: ev.IntentSubmitted, seq: int) -> StoredEvent:
    intent_id = derive_intent_id(intent.agent_id, intent.idempotency_key)
    env = make_envelope(payload, producer=PRODUCER, intent_id=intent_id, agent_id=intent.agent_id)
    return decode(encode(env), seq=seq)


def view_of(tool: str, arguments: dict[str, Any], *later: ev.Payload, operation: str = "call_tool") -> IntentView:
    intent = sign_intent(new_intent("bot", tool, arguments, operation=operation), KEY)
    return fold_intent([stored(p, intent, i + 1) for i, p in enumerate((intent, *later))])


AUTHENTICATED = ev.IntentAuthenticated(key_id="k", owner="alice", teams=[])


def server(**fields: Any) -> ev.ServerRegistered:
    return ev.ServerRegistered(**{"name": "time", "transport": "stdio", "command": "/bin/t", **fields})


def catalog_of(*servers: ev.ServerRegistered) -> Catalog:
    catalog = Catalog()
    for s in servers:
        catalog.servers[s.name] = s
    return catalog


TOOL = ev.ToolDefinition(
    name="now", input_schema={"type": "object"}, annotations=ev.ToolAnnotations(), tool_digest="sha256:" + "a" * 64
)


class TestAddServer:
    @pytest.mark.parametrize(
        "config",
        [
            server(),
            server(name="mail", transport="http", command=None, url="https://mail.example/mcp"),
            server(secret_env={"TOKEN": "mail-token"}),
            server(name="mail", transport="http", command=None, url="https://m/", secret_headers={"Auth": "m-key"}),
            server(max_concurrency=1),
        ],
    )
    def test_a_complete_configuration_is_accepted(self, config: ev.ServerRegistered) -> None:
        assert domain.server_refusal(config) is None

    @pytest.mark.parametrize(
        ("config", "refusal"),
        [
            (
                server(name="Time!"),
                Refusal(code="invalid_server_name", reason="server name 'Time!' must match [a-z0-9][a-z0-9_-]{0,62}"),
            ),
            (server(command=None), Refusal(code="invalid_server", reason="a stdio server needs a command")),
            (server(transport="http"), Refusal(code="invalid_server", reason="an http server needs a url")),
            (
                server(secret_env={"TOKEN": "Not A Name"}),
                Refusal(code="invalid_server", reason="secret name 'Not A Name' must match [a-z0-9][a-z0-9_-]{0,62}"),
            ),
            (
                server(secret_headers={"Auth": "k"}),
                Refusal(
                    code="invalid_server",
                    reason="secret headers are for an HTTP server; a stdio server takes secret environment variables",
                ),
            ),
            (
                server(env={"TOKEN": "plain"}, secret_env={"TOKEN": "k"}),
                Refusal(code="invalid_server", reason="'TOKEN' is given both a value and a secret reference"),
            ),
            (
                server(max_concurrency=0),
                Refusal(code="invalid_server", reason="max_concurrency must be between 1 and 1024, not 0"),
            ),
        ],
    )
    def test_an_incomplete_configuration_is_refused(self, config: ev.ServerRegistered, refusal: Refusal) -> None:
        assert domain.server_refusal(config) == refusal

    def test_a_name_is_taken_only_by_another_configuration(self) -> None:
        catalog = catalog_of(server())
        assert domain.registration_refusal(catalog, server()) is None  # the same again is a retry
        assert domain.registration_refusal(catalog, server(name="other")) is None
        taken = domain.registration_refusal(catalog, server(command="/bin/other", args=["-v"]))
        assert taken is not None and taken.code == "server_exists"
        assert "(/bin/t)" in taken.reason and "`writ server remove time`" in taken.reason

    def test_a_name_registered_again_after_removal_is_a_new_generation(self) -> None:
        catalog = catalog_of(server())
        assert domain.generation_suffix(catalog, "time") == ""
        catalog.removals["time"] = 2
        assert domain.generation_suffix(catalog, "time") == ":2"

    def test_a_target_is_the_url_or_the_command_line(self) -> None:
        assert domain.describe_target(server(args=["--tz", "UTC"])) == "/bin/t --tz UTC"
        assert domain.describe_target(server(transport="http", url="https://t/")) == "https://t/"


class TestLookups:
    def test_unknown_servers_tools_and_empty_quarantine_are_refused(self) -> None:
        catalog = catalog_of(server())
        catalog.tools["time"] = {"now": TOOL}
        assert domain.registered(catalog, "time") == server()
        assert domain.registered(catalog, "mail", hint=" (`writ server list`)") == Refusal(
            code="unknown_server", reason="no server 'mail' is registered (`writ server list`)"
        )
        assert domain.accepted_tool(catalog, "time", "now") is TOOL
        assert domain.accepted_tool(catalog, "time", "later") == Refusal(
            code="unknown_tool", reason="no tool 'later' on server 'time'"
        )
        assert domain.quarantined(catalog, "time", "now") == Refusal(
            code="not_quarantined", reason="time/now has no version waiting in quarantine"
        )
        catalog.quarantined["time"] = {"now": TOOL}
        assert domain.quarantined(catalog, "time", "now") is TOOL


class TestPlanning:
    def test_only_an_authenticated_unplanned_intent_waits_for_the_registry(self) -> None:
        assert not domain.needs_plan(view_of("time/now", {}))
        assert domain.needs_plan(view_of("time/now", {}, AUTHENTICATED))
        planned = ev.IntentPlanned(
            server="time", tool="now", tool_digest=TOOL.tool_digest, args_digest="d", annotations=ev.ToolAnnotations()
        )
        assert not domain.needs_plan(view_of("time/now", {}, AUTHENTICATED, planned))

    def test_a_catalog_refusal_is_the_rejections_code_and_reason(self) -> None:
        catalog = catalog_of(server())
        catalog.quarantined["time"] = {"now": TOOL}
        decision = domain.plan(view_of("time/now", {}, AUTHENTICATED), catalog, domain.Validators(), args_key=ARGS_KEY)
        assert isinstance(decision, ev.IntentRejected) and decision.code == "quarantined_tool"
        assert decision.reason.startswith("quarantined_tool: time/now changed (version aaaaaaaaaaaa)")

    @pytest.mark.parametrize(
        ("tool", "operation", "arguments", "code"),
        [
            ("mail/x", "read_resource", {}, "unknown_server"),
            ("time/file:///a", "read_resource", {"x": 1}, "invalid_arguments"),
            ("time/", "read_resource", {}, "invalid_target"),
            ("time/p", "get_prompt", {"arguments": {"a": 1}}, "invalid_arguments"),
        ],
    )
    def test_an_operations_problem_is_the_rejections_code_and_reason(
        self, tool: str, operation: str, arguments: dict[str, Any], code: str
    ) -> None:
        view = view_of(tool, arguments, AUTHENTICATED, operation=operation)
        decision = domain.plan(view, catalog_of(server()), domain.Validators(), args_key=ARGS_KEY)
        assert isinstance(decision, ev.IntentRejected) and (decision.stage, decision.code) == ("plan", code)
        assert decision.reason.startswith(f"{code}: ")

    def test_an_unknown_operation_is_refused_naming_the_ones_writ_governs(self) -> None:
        refusal = operations.problem("delete_everything", "x", {})
        assert refusal is not None and refusal.code == "unknown_operation"
        assert "call_tool" in refusal.reason and not refusal.reason.startswith("unknown_operation")
