"""Bus permissions as data: every intent event has an owner allowed to publish it, agents only
their own submissions, and the servers' config carries no seed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from writ_common import busauth, busjwt, subjects
from writ_common.events import CATALOG
from writ_common.subjects import event_token

INTENT_FAMILIES = ("intent.", "execution.", "approval.")


def test_every_intent_event_but_submitted_is_owned_by_a_service() -> None:
    owned = {token for tokens in busauth.INTENT_EVENTS_BY_SERVICE.values() for token in tokens}
    on_intents = {event_token(t) for t, _ in CATALOG if t.startswith(INTENT_FAMILIES)}
    assert on_intents - owned == {"submitted", "cancel_requested"}  # the agent's own, nothing left without an owner


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
    assert agent.subscribe == (
        "writ.intent.bot-1.>",
        "writ.notice.bot-1.>",
        "_INBOX_agent-bot-1.>",
        "writ.list_changed.>",  # a server's resources or prompts listing changed: for every agent
    )
    assert not agent.allow_responses
    # its client's answers to a server's requests for input, under its own id only
    assert "writ.answer.bot-1.>" in agent.publish and not any(s.startswith("writ.answer.*") for s in agent.publish)


def test_only_the_executor_asks_agents_for_input_and_hears_their_answers() -> None:
    executor, ledger = busauth.service_user("executor", "UEX"), busauth.service_user("ledger", "ULEDGER")
    assert "writ.notice.*.*.input" in executor.publish and "writ.answer.>" in executor.subscribe
    assert "writ.notice.*.*.input" not in ledger.publish and "writ.answer.>" not in ledger.subscribe


def covers(pattern: str, subject: str) -> bool:
    """Whether a NATS allow ``pattern`` lets a user subscribe to ``subject`` (itself perhaps a
    wildcard): every subject ``subject`` can match, ``pattern`` matches too."""
    wanted, asked = pattern.split("."), subject.split(".")
    for i, token in enumerate(wanted):
        if token == ">":
            return i < len(asked)
        if i >= len(asked) or (token == "*" and asked[i] == ">") or token not in ("*", asked[i]):
            return False
    return len(wanted) == len(asked)


def test_only_the_agent_hears_of_its_resources_and_only_the_executor_tells_it() -> None:
    alice, mallory = busauth.agent_user("alice", "UA"), busauth.agent_user("mallory", "UM")
    updated = subjects.resource_updated_subject("alice")
    assert any(covers(p, updated) for p in alice.subscribe)
    # Mallory can name Alice's subject, or any wildcard over it: the bus refuses each.
    for attempt in (updated, "writ.notice.*.resources.updated", "writ.notice.alice.>", "writ.notice.>", ">"):
        assert not any(covers(p, attempt) for p in mallory.subscribe), attempt
    # Nobody but the executor says a resource changed, or that a listing did.
    changed = subjects.list_changed_subject("fs", "resources")
    for who in (alice, mallory, *(busauth.service_user(s, "U") for s in ("identity", "registry", "policy", "ledger"))):
        assert not any(covers(p, s) for p in who.publish for s in (updated, changed)), who.name
    executor = busauth.service_user("executor", "UEX")
    assert all(any(covers(p, s) for p in executor.publish) for s in (updated, changed))
    assert all(any(covers(p, changed) for p in agent.subscribe) for agent in (alice, mallory))


def test_the_servers_config_holds_no_seed_and_each_holder_gets_its_own(tmp_path: Path) -> None:
    trust = busauth.init_trust(tmp_path / "bus", ["identity", "ledger"])
    auth = trust.auth_conf.read_text()
    seeds = [p.read_text().strip() for p in (tmp_path / "bus" / "keys").glob("*.nk")]
    issuer = trust.issuer()
    held = [
        *seeds,
        issuer.account_signing_seed,
        issuer.operator_signing_seed,
        busjwt.creds_parts(issuer.system_creds)[1],
    ]
    assert len(seeds) == 4 and not any(seed in auth for seed in held)
    # identity's issuer holds an operator *signing* key, never the operator's own.
    assert issuer.operator_signing_seed != trust.key_file("operator").read_text().strip()
    for path in (*(trust.creds_file(u) for u in ("identity", "ledger", "operator")), trust.issuer_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    ledger_jwt, ledger_seed = busjwt.creds_parts(trust.creds_file("ledger").read_text())
    claims = busjwt.decode(ledger_jwt)
    assert claims["sub"] == busauth.public_nkey(ledger_seed) and claims["nats"]["issuer_account"] == issuer.account
    assert claims["nats"]["pub"]["allow"] == list(busauth.service_user("ledger", "U").publish)
    assert "pub" not in busjwt.decode(busjwt.creds_parts(trust.creds_file("operator").read_text())[0])["nats"]


def test_a_second_init_keeps_every_key_and_the_servers_accounts(tmp_path: Path) -> None:
    first = busauth.init_trust(tmp_path, ["policy"])
    kept = {p: p.read_text() for p in [first.auth_conf, first.issuer_file, *(tmp_path / "keys").glob("*.nk")]}
    seed = busjwt.creds_parts(first.creds_file("policy").read_text())[1]
    again = busauth.init_trust(tmp_path, ["policy"])
    assert {p: p.read_text() for p in kept} == kept  # a restart never preloads an older account over revocations
    assert busjwt.creds_parts(again.creds_file("policy").read_text())[1] == seed


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
    # Moving its own consumer back to the progress it had, once it is placed anew after a node's loss.
    assert "$JS.API.CONSUMER.RESET.WRIT_INTENTS.writ-registry" in registry.publish
    assert "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.WRIT_INTENTS.writ-registry" in registry.subscribe


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
