"""Bus permissions as data: every intent event has an owner allowed to publish it, agents only
their own submissions, and the config carries public keys only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from writ_common import busauth
from writ_common.events import CATALOG
from writ_common.subjects import event_token

INTENT_FAMILIES = ("intent.", "execution.", "approval.")


def test_every_intent_event_but_submitted_is_owned_by_a_service() -> None:
    owned = {token for tokens in busauth.INTENT_EVENTS_BY_SERVICE.values() for token in tokens}
    on_intents = {event_token(t) for t, _ in CATALOG if t.startswith(INTENT_FAMILIES)}
    assert on_intents - owned == {"submitted"}  # the agent's own, and nothing left without an owner


def test_a_service_publishes_its_own_events_and_no_others() -> None:
    policy = busauth.service_user("policy", "UPOLICY")
    assert "writ.intent.*.*.authorized" in policy.publish
    assert not any(p.endswith((".submitted", ".planned", ".execution_started")) for p in policy.publish)
    assert "writ.registry.>" not in policy.publish and "writ.policy.>" in policy.publish
    assert not any(p.startswith("$JS.API.STREAM.CREATE") or p == "$JS.API.>" for p in policy.publish)


def test_an_agent_submits_and_reads_under_its_own_id_only() -> None:
    agent = busauth.agent_user("bot-1", "UBOT")
    assert agent.publish[0] == "writ.intent.bot-1.*.submitted"
    commands = [s for s in agent.publish if s.startswith("writ.cmd.")]
    # the MCP gateway's tools/list and resources/prompts listings, read-only
    assert commands == ["writ.cmd.registry.list_tools", "writ.cmd.executor.list_offered"]
    assert all("bot-1" in s or "receipt" in s for s in agent.publish if s not in commands)
    assert agent.subscribe == ("writ.intent.bot-1.>", "writ.notice.bot-1.>", "_INBOX_agent-bot-1.>")
    assert not agent.allow_responses


def test_the_rendered_users_hold_public_keys_only(tmp_path: Path) -> None:
    bus = busauth.prepare_embedded(tmp_path, ["identity"])
    rendered = bus.users_conf.read_text()
    seed = bus.seed_file("operator").read_text().strip()
    assert seed not in rendered and bus.seed_file("identity").read_text().strip() not in rendered
    users = json.loads(rendered.removeprefix("users = "))
    assert {"nkey": busauth.public_nkey(seed)} in users  # the operator: its public key, nothing else


def test_only_user_public_nkeys_pass_as_bus_keys() -> None:
    key = busauth.public_nkey(busauth.new_seed())
    assert busauth.is_user_nkey(key)
    assert not busauth.is_user_nkey(key[:-1] + ("A" if key[-1] != "A" else "B"))  # checksum
    assert not busauth.is_user_nkey("S" + key[1:]) and not busauth.is_user_nkey("not a key")


def test_an_approver_hears_only_its_own_groups_and_asks_only_policy() -> None:
    carol = busauth.approver_user("carol", "UCAROL", ["ops", "fin"])
    assert carol.subscribe == (
        "writ.notice.approvals.ops.>",
        "writ.notice.approvals.fin.>",
        "_INBOX_approvers.carol.>",
    )
    # Only on its own subjects, so policy knows who asks from the subject alone.
    assert carol.publish and all(p.startswith("writ.cmd.policy.approver.carol.") for p in carol.publish)


def test_names_that_are_not_one_subject_token_make_no_bus_user() -> None:
    for make in (
        lambda: busauth.agent_user("a.>", "UKEY"),
        lambda: busauth.approver_user("carol", "UKEY", ["ops", "a.>"]),
        lambda: busauth.approver_user("car ol", "UKEY", ["ops"]),
    ):
        with pytest.raises(ValueError, match="must match"):
            make()


def test_a_service_administers_only_its_own_consumer() -> None:
    registry = busauth.service_user("registry", "UREGISTRY")
    consumer_api = [p for p in registry.publish if p.startswith(("$JS.API.CONSUMER.", "$JS.ACK."))]
    assert consumer_api and all(".WRIT_INTENTS.writ-registry" in p for p in consumer_api), consumer_api
    assert not any("DELETE" in p or p.endswith("CONSUMER.>") for p in registry.publish)
    assert "$JS.EVENT.ADVISORY.CONSUMER.DELETED.WRIT_INTENTS.writ-registry" in registry.subscribe


def test_the_ledger_reads_every_services_consumer_info_and_administers_only_its_own() -> None:
    ledger = busauth.service_user("ledger", "ULEDGER")
    others = [
        p
        for p in ledger.publish
        if p.startswith(("$JS.API.CONSUMER.", "$JS.ACK.")) and ".WRIT_INTENTS.writ-ledger" not in p
    ]
    # For the console's Plane page: how far behind each service is; info only, nothing else.
    assert others == ["$JS.API.CONSUMER.INFO.WRIT_INTENTS.*"]
    assert not any("DELETE" in p for p in ledger.publish)
    for service in ("identity", "registry", "policy", "executor"):
        assert "$JS.API.CONSUMER.INFO.WRIT_INTENTS.*" not in busauth.service_user(service, "U").publish
