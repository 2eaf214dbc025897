"""Identity's rules, reached without a broker or Redis: the nonce verdict, the "already done?"
guard, the signature/grace/revocation/freshness checks, and every command's refusal."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import nkeys
import pytest

from writ.sdk import new_intent, sign_intent
from writ_common import events as ev
from writ_common.busauth import is_user_nkey, public_nkey
from writ_common.busjwt import new_seed
from writ_common.envelope import Producer, StoredEvent, decode, encode, make_envelope, parse_time
from writ_common.errors import Refusal
from writ_common.fold import IntentView, fold_intent
from writ_common.ids import derive_intent_id
from writ_common.signing import generate_key, public_key_b64
from writ_identity import domain
from writ_identity.domain import Agent

pytestmark = pytest.mark.unit

PRODUCER = Producer(service="test", instance="t", version="0")
SKEW = timedelta(minutes=5)
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
KEY, OLD_KEY = generate_key(), generate_key()


def registered(payload: ev.AgentRegistered) -> Agent:
    """The agent as identity folds it from its registration."""
    agents: dict[str, Agent] = {}
    domain.apply_identity_event(agents, decode(encode(make_envelope(payload, producer=PRODUCER)), seq=1))
    return agents[payload.agent_id]


AGENT = registered(ev.AgentRegistered(agent_id="bot", public_key=public_key_b64(KEY), owner="alice", teams=["ops"]))
BUS_KEY = public_nkey(new_seed(nkeys.PREFIX_BYTE_USER))


def intent_at(issued: datetime, *, key: Any = KEY, agent_id: str = "bot") -> ev.IntentSubmitted:
    unsigned = new_intent(agent_id, "time/get_current_time", {})
    stamp = issued.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return sign_intent(msgspec.structs.replace(unsigned, issued_at=stamp), key)


def stored(payload: ev.Payload, intent: ev.IntentSubmitted, seq: int, *, agent_id: str | None = None) -> StoredEvent:
    intent_id = derive_intent_id(intent.agent_id, intent.idempotency_key)
    env = make_envelope(payload, producer=PRODUCER, intent_id=intent_id, agent_id=agent_id or intent.agent_id)
    return decode(encode(env), seq=seq)


def view_of(intent: ev.IntentSubmitted, *later: ev.Payload, agent_id: str | None = None) -> IntentView:
    return fold_intent([stored(p, intent, i + 1, agent_id=agent_id) for i, p in enumerate((intent, *later))])


def refusal_of(intent: ev.IntentSubmitted, agent: Agent | None, *, now: datetime = NOW) -> Refusal | None:
    return domain.intent_refusal(view_of(intent), agent, now=now, clock_skew=SKEW)


class TestNonce:
    def test_a_nonce_claimed_now_is_fresh(self) -> None:
        assert domain.nonce_is_fresh(claimed=True, holder=None, intent_id="i1")

    @pytest.mark.parametrize("holder", ["i1", b"i1"])
    def test_a_nonce_held_by_the_same_intent_is_a_redelivery_not_a_replay(self, holder: str | bytes) -> None:
        assert domain.nonce_is_fresh(claimed=False, holder=holder, intent_id="i1")

    @pytest.mark.parametrize("holder", ["i2", b"i2", None])
    def test_a_nonce_held_by_another_intent_or_gone_is_refused(self, holder: str | bytes | None) -> None:
        # None: the key expired between the claim and the read; failing closed is the safe side.
        assert not domain.nonce_is_fresh(claimed=False, holder=holder, intent_id="i1")

    def test_a_reused_nonce_rejects_the_intent_saying_which_nonce(self) -> None:
        intent = intent_at(NOW)
        verdict = domain.authentication(AGENT, intent, nonce_fresh=False)
        assert isinstance(verdict, ev.IntentRejected)
        assert (verdict.stage, verdict.code) == ("authenticate", "nonce_reused")
        assert verdict.reason == f"nonce_reused: nonce {intent.nonce!r} was already used by another intent"

    def test_a_fresh_nonce_authenticates_as_the_agent(self) -> None:
        verdict = domain.authentication(AGENT, intent_at(NOW), nonce_fresh=True)
        assert verdict == ev.IntentAuthenticated(key_id=AGENT.key_id, owner="alice", teams=["ops"])

    def test_a_nonce_is_held_per_agent_for_the_whole_freshness_window(self) -> None:
        intent = intent_at(NOW)
        assert domain.nonce_key(intent) == f"writ:nonce:bot:{intent.nonce}"
        assert domain.nonce_ttl_seconds(300.0) == 601  # past issued_at +- skew, after which stale_intent refuses


class TestAlreadyDone:
    def test_a_submitted_intent_waits_for_identity(self) -> None:
        view = view_of(intent_at(NOW))
        assert view.submitted_event is not None
        assert domain.needs_authentication(view, view.submitted_event.envelope.id)

    def test_an_authenticated_intent_is_not_authenticated_again(self) -> None:
        view = view_of(intent_at(NOW), domain.authenticated(AGENT))
        assert view.submitted_event is not None
        assert not domain.needs_authentication(view, view.submitted_event.envelope.id)

    def test_a_second_submitted_on_a_live_intent_changes_nothing(self) -> None:
        view = view_of(intent_at(NOW))
        assert not domain.needs_authentication(view, "some-other-envelope-id")


class TestIntentChecks:
    def test_an_intent_published_under_another_agent_is_a_mismatch(self) -> None:
        refusal = domain.intent_refusal(view_of(intent_at(NOW), agent_id="eve"), AGENT, now=NOW, clock_skew=SKEW)
        assert refusal is not None and refusal.code == "agent_mismatch"

    def test_the_previous_key_signs_only_intents_issued_within_its_grace(self) -> None:
        rotated = replace(
            AGENT, previous_public_key=public_key_b64(OLD_KEY), previous_valid_until=NOW - timedelta(seconds=1)
        )
        assert refusal_of(intent_at(NOW - timedelta(seconds=2), key=OLD_KEY), rotated) is None
        late = refusal_of(intent_at(NOW, key=OLD_KEY), rotated)
        assert late is not None and late.code == "key_rotated"
        unrelated = refusal_of(intent_at(NOW, key=generate_key()), rotated)
        assert unrelated is not None and unrelated.code == "bad_signature"

    def test_a_revoked_agent_is_refused_from_its_revocation_on(self) -> None:
        revoked = replace(AGENT, revoked_at=NOW)
        assert refusal_of(intent_at(NOW - timedelta(seconds=1)), revoked) is None
        refusal = refusal_of(intent_at(NOW), revoked)
        assert refusal == Refusal(code="agent_revoked", reason=f"agent 'bot' was revoked at {NOW.isoformat()}")

    def test_freshness_cuts_both_ways(self) -> None:
        for issued in (NOW - SKEW - timedelta(seconds=1), NOW + SKEW + timedelta(seconds=1)):
            refusal = refusal_of(intent_at(issued), AGENT)
            assert refusal is not None and refusal.code == "stale_intent"
        assert refusal_of(intent_at(NOW - SKEW), AGENT) is None

    def test_the_rejection_event_keeps_the_code_prefixed_reason(self) -> None:
        rejection = domain.check_intent(view_of(intent_at(NOW)), None, now=NOW, clock_skew=SKEW)
        assert rejection == ev.IntentRejected(
            stage="authenticate", code="unknown_agent", reason="unknown_agent: no agent 'bot' is registered"
        )


def registration(**overrides: Any) -> Refusal | None:
    given: dict[str, Any] = {"agent_id": "bot", "public_key": public_key_b64(KEY), "bus_key": None, **overrides}
    return domain.agent_registration_refusal(
        given["agent_id"], given["public_key"], given["bus_key"], is_user_nkey=is_user_nkey
    )


class TestCommands:
    def test_a_well_formed_agent_registers_with_or_without_a_bus_key(self) -> None:
        assert registration() is None
        assert registration(bus_key=BUS_KEY) is None

    @pytest.mark.parametrize(
        ("overrides", "code"),
        [
            ({"agent_id": "Bot!"}, "invalid_agent_id"),
            ({"agent_id": "approvals"}, "invalid_agent_id"),  # its notices would be the approvers'
            ({"public_key": "not base64!"}, "invalid_public_key"),
            ({"public_key": public_key_b64(KEY)[:-4]}, "invalid_public_key"),
            ({"bus_key": "U" + "A" * 55}, "invalid_bus_key"),  # right shape, bad checksum
            ({"bus_key": public_nkey(new_seed(nkeys.PREFIX_BYTE_ACCOUNT))}, "invalid_bus_key"),
            ({"agent_id": "Bot!", "public_key": "x"}, "invalid_agent_id"),  # the id is checked first
        ],
    )
    def test_a_malformed_agent_is_refused_with_a_stable_code(self, overrides: dict[str, Any], code: str) -> None:
        refusal = registration(**overrides)
        assert refusal is not None and refusal.code == code

    @pytest.mark.parametrize(
        ("approver_id", "groups", "code"),
        [
            ("Ann!", ["ops"], "invalid_approver_id"),
            ("ann", [], "invalid_groups"),
            ("ann", ["ops", "a.b"], "invalid_group"),
        ],
    )
    def test_an_approver_needs_a_token_id_and_token_groups(
        self, approver_id: str, groups: list[str], code: str
    ) -> None:
        refusal = domain.approver_registration_refusal(
            approver_id, public_key_b64(KEY), groups, None, is_user_nkey=is_user_nkey
        )
        assert refusal is not None and refusal.code == code
        assert (
            domain.approver_registration_refusal(
                "ann", public_key_b64(KEY), ["ops"], BUS_KEY, is_user_nkey=is_user_nkey
            )
            is None
        )

    @pytest.mark.parametrize(
        ("name", "token_hash", "scope", "code"),
        [
            ("Dash!", "sha256:" + "0" * 64, ev.SUMMARY_SCOPE, "invalid_name"),
            ("dash", "sha256:" + "A" * 64, ev.SUMMARY_SCOPE, "invalid_token_hash"),
            ("dash", "the token itself", ev.SUMMARY_SCOPE, "invalid_token_hash"),
            ("dash", "sha256:" + "0" * 64, "everything", "invalid_scope"),
        ],
    )
    def test_a_reader_token_is_recorded_only_by_a_well_formed_hash(
        self, name: str, token_hash: str, scope: str, code: str
    ) -> None:
        refusal = domain.reader_token_refusal(name, token_hash, scope)
        assert refusal is not None and refusal.code == code
        assert domain.reader_token_refusal("dash", "sha256:" + "0" * 64, ev.SUMMARY_SCOPE) is None

    def test_rotation_keeps_the_previous_key_for_its_grace(self) -> None:
        new_key = public_key_b64(OLD_KEY)
        rotated = domain.rotation(AGENT, "bot", new_key, grace_seconds=60, now=NOW)
        assert isinstance(rotated, ev.AgentKeyRotated)
        assert (rotated.public_key, rotated.previous_public_key) == (new_key, AGENT.public_key)
        assert parse_time(rotated.previous_valid_until) == NOW + timedelta(seconds=60)
        negative = domain.rotation(AGENT, "bot", new_key, grace_seconds=-5, now=NOW)
        assert isinstance(negative, ev.AgentKeyRotated) and parse_time(negative.previous_valid_until) == NOW

    @pytest.mark.parametrize(
        ("agent", "public_key", "code"),
        [
            (None, public_key_b64(OLD_KEY), "unknown_agent"),
            (replace(AGENT, revoked_at=NOW), public_key_b64(OLD_KEY), "agent_revoked"),
            (None, "bad", "invalid_public_key"),  # the key is checked before the agent
        ],
    )
    def test_rotation_is_refused(self, agent: Agent | None, public_key: str, code: str) -> None:
        refusal = domain.rotation(agent, "bot", public_key, grace_seconds=60, now=NOW)
        assert isinstance(refusal, Refusal) and refusal.code == code

    def test_an_agent_is_revoked_once(self) -> None:
        revoked = domain.revocation(AGENT, "bot", reason="lost laptop", revoked_at="2026-01-02T03:04:05Z")
        assert revoked == ev.AgentRevoked(agent_id="bot", revoked_at="2026-01-02T03:04:05Z", reason="lost laptop")
        again = domain.revocation(replace(AGENT, revoked_at=NOW), "bot", reason="", revoked_at="x")
        assert again == Refusal(code="already_revoked", reason=f"agent 'bot' was revoked at {NOW.isoformat()}")
        unknown = domain.revocation(None, "bot", reason="", revoked_at="x")
        assert isinstance(unknown, Refusal) and unknown.code == "unknown_agent"

    @pytest.mark.parametrize(
        ("agent", "code"),
        [
            (None, "unknown_agent"),
            (replace(AGENT, revoked_at=NOW, bus_key=BUS_KEY), "agent_revoked"),
            (AGENT, "no_bus_key"),
        ],
    )
    def test_a_bus_jwt_is_issued_again_only_to_an_active_agent_with_a_bus_key(
        self, agent: Agent | None, code: str
    ) -> None:
        refusal = domain.bus_key_holder(agent, "bot")
        assert isinstance(refusal, Refusal) and refusal.code == code
        holder = replace(AGENT, bus_key=BUS_KEY)
        assert domain.bus_key_holder(holder, "bot") is holder
