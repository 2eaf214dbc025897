"""The bus itself enforces who may say what: the embedded plane's nats-server refuses a forged
event from an agent, an agent speaking for another, and a service publishing another's event."""

from __future__ import annotations

import asyncio
import json
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client
from plane_reads import stored_on

from cli_runner import Writ
from writ.keys import agent_bus_creds_path
from writ.runtime.supervisor import SERVICES, Plane
from writ.sdk import WritAgent, fetch_receipt, new_intent, sign_intent
from writ_common import busauth, busjwt, commands, subjects
from writ_common.envelope import Producer, encode, make_envelope
from writ_common.events import IntentAuthorized, PolicyBundlePublished
from writ_common.ids import derive_intent_id
from writ_common.signing import load_key
from writ_common.subjects import inbox_prefix

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

FORGER = Producer(service="forger", instance="test", version="0")


@dataclass
class BusUser:
    nc: Client
    errors: list[str] = field(default_factory=list)

    async def refused(self, subject: str, data: bytes = b"{}") -> bool:
        """Publish as a JetStream append; True when the server refused it (no ack, a violation)."""
        before = len(self.errors)
        with pytest.raises(nats.errors.TimeoutError):
            await self.nc.jetstream().publish(subject, data, timeout=1.0)
        await asyncio.sleep(0.1)
        return any("permissions violation" in e.lower() for e in self.errors[before:])


async def connect_as(plane: Plane, creds: Path, user: str) -> BusUser:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        plane.nats_url,
        user_credentials=str(creds),
        inbox_prefix=inbox_prefix(user),
        error_cb=on_error,
        allow_reconnect=False,
    )
    return BusUser(nc, errors)


@dataclass
class Agent:
    name: str
    bus: BusUser


@pytest_asyncio.fixture(loop_scope="session")
async def agent(writ: Writ, plane: Plane) -> AsyncIterator[Agent]:
    name = f"bus-{uuid.uuid4().hex[:8]}"
    assert (await asyncio.to_thread(writ, "agent", "register", name)).exit_code == 0
    bus = await connect_as(plane, agent_bus_creds_path(plane.data_dir, name), f"agent-{name}")
    try:
        yield Agent(name, bus)
    finally:
        await bus.nc.close()


async def test_credentials_are_files_only_their_owner_can_read(writ: Writ, plane: Plane) -> None:
    name = f"bus-{uuid.uuid4().hex[:8]}"
    assert (await asyncio.to_thread(writ, "agent", "register", name)).exit_code == 0
    files = [
        *(plane.bus.creds_file(s) for s in (*SERVICES, "operator")),
        agent_bus_creds_path(plane.data_dir, name),
        plane.bus.issuer_file,
        *(plane.bus.key_file(k) for k in ("operator", "operator-signing", "system", "writ")),
    ]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(plane.bus.root.stat().st_mode) == 0o700
    # The servers' config holds JWTs (public claims) only, never a seed.
    seeds = {busjwt.creds_parts(p.read_text())[1] for p in plane.bus.root.glob("creds/*.creds")}
    seeds |= {p.read_text().strip() for p in plane.bus.root.glob("keys/*.nk")}
    config = "".join(p.read_text() for p in (plane.bus.auth_conf, *plane.data_dir.glob("nats*.conf")))
    assert seeds and not any(seed in config for seed in seeds)


async def test_an_anonymous_client_is_not_let_in(plane: Plane) -> None:
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        await nats.connect(plane.nats_url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)


async def test_an_agent_submits_and_reads_its_own_intent(plane: Plane, agent: Agent) -> None:
    key = load_key(plane.data_dir / "keys" / "agents" / f"{agent.name}.key")
    sdk = WritAgent(agent.bus.nc, agent.name, key)
    notices = await agent.bus.nc.subscribe(f"writ.notice.{agent.name}.>")
    submission = await sdk.submit("get_current_time", {"timezone": "UTC"})
    assert submission.intent_id
    receipt = await sdk.receipt(submission.intent_id, timeout=30)  # whatever its outcome, it is the agent's to read
    assert receipt.intent_id == submission.intent_id and receipt.agent_id == agent.name
    # The ledger tells the agent, on a subject only it may hear, that its receipt is stored.
    notice = await notices.next_msg(timeout=5)
    assert notice.subject == subjects.receipt_notice_subject(agent.name, submission.intent_id)
    assert not [e for e in agent.bus.errors if "violation" in e.lower()], agent.bus.errors


async def test_an_agent_cannot_read_another_agents_receipt(writ: Writ, plane: Plane, agent: Agent) -> None:
    key = load_key(plane.data_dir / "keys" / "agents" / f"{agent.name}.key")
    mine = await WritAgent(agent.bus.nc, agent.name, key).call(
        "get_current_time", {"timezone": "UTC"}, idempotency_key="order-1", timeout=30
    )
    nosy = f"bus-{uuid.uuid4().hex[:8]}"
    assert (await asyncio.to_thread(writ, "agent", "register", nosy)).exit_code == 0
    other = await connect_as(plane, agent_bus_creds_path(plane.data_dir, nosy), f"agent-{nosy}")
    try:
        # Intent ids derive from agent and key, so a guessable key gives the id away; the receipt
        # still lives under its agent's name, which the other agent's bus user may not read.
        assert mine.intent_id == derive_intent_id(agent.name, "order-1")
        for subject in (
            subjects.receipt_subject(agent.name, mine.intent_id),
            subjects.any_receipt_subject(mine.intent_id),
        ):
            with pytest.raises(nats.errors.TimeoutError):
                # The server drops a denied request and says so at once (the error checked below):
                # no answer comes, however long the wait (nats-py's default is 5 s).
                await other.nc.jetstream(timeout=1.0).get_last_msg(subjects.LEDGER_STREAM, subject, direct=True)
            await asyncio.sleep(0.1)
            assert any("permissions violation" in e.lower() for e in other.errors), other.errors
            other.errors.clear()
        # Its owner reads it by the same route.
        assert await fetch_receipt(agent.bus.nc, mine.intent_id, agent_id=agent.name) == mine
    finally:
        await other.nc.close()


async def test_an_agent_may_list_the_tools_and_ask_the_registry_nothing_else(plane: Plane, agent: Agent) -> None:
    # The MCP gateway's tools/list: one read-only command, answered into the agent's own inbox.
    tools = await commands.call(agent.bus.nc, "registry", "list_tools", {}, timeout=5)
    assert isinstance(tools, list)
    # And its resources/list (prompts/list...): what the servers offer, from the executor, read-only.
    offered = await commands.call(agent.bus.nc, "executor", "list_offered", {"method": "prompts/list"}, timeout=15)
    assert isinstance(offered, list)
    assert not [e for e in agent.bus.errors if "violation" in e.lower()], agent.bus.errors
    body = json.dumps({"name": "sneaky", "command": "/bin/true"}).encode()
    denied = ("registry.add_server", "registry.accept_tool", "registry.list_servers", "executor.set_secret")
    denied += ("executor.discover",)

    async def unanswered(command: str) -> None:
        with pytest.raises(nats.errors.TimeoutError):
            await agent.bus.nc.request(f"writ.cmd.{command}", body, timeout=1.0)

    # All at once (each waits out its timeout); the server names each refused subject in its error.
    await asyncio.gather(*(unanswered(command) for command in denied))
    await asyncio.sleep(0.1)
    for command in denied:
        violations = [e for e in agent.bus.errors if "permissions violation" in e.lower()]
        assert any(f'"writ.cmd.{command}"' in e for e in violations), (command, agent.bus.errors)


async def test_a_forged_authorization_from_an_agent_is_refused_by_the_server(plane: Plane, agent: Agent) -> None:
    intent_id = derive_intent_id(agent.name, "forged")
    subject = subjects.intent_subject(agent.name, intent_id, "intent.authorized")
    forged = make_envelope(
        IntentAuthorized(policy_digest="sha256:" + "0" * 64, policy_ids=["forged"], reasons=["trust me"]),
        producer=FORGER,
        intent_id=intent_id,
        agent_id=agent.name,
    )
    assert await agent.bus.refused(subject, encode(forged))
    assert await stored_on(plane, subject) == 0


async def test_an_agent_cannot_submit_under_another_agents_id(plane: Plane, agent: Agent) -> None:
    other = "someone-else"
    key = load_key(plane.data_dir / "keys" / "agents" / f"{agent.name}.key")
    intent = sign_intent(new_intent(other, "get_current_time", {}), key)
    intent_id = derive_intent_id(other, intent.idempotency_key)
    subject = subjects.intent_subject(other, intent_id, "intent.submitted")
    envelope = make_envelope(intent, producer=FORGER, intent_id=intent_id, agent_id=other)
    assert await agent.bus.refused(subject, encode(envelope))
    assert await stored_on(plane, subject) == 0


async def test_a_service_cannot_publish_another_services_event(plane: Plane) -> None:
    registry = await connect_as(plane, plane.bus.creds_file("registry"), "registry")
    try:
        authorized = subjects.intent_subject("a", "b", "intent.authorized")  # policy's
        assert await registry.refused(authorized)
        bundle = PolicyBundlePublished(
            policy_digest="sha256:" + "0" * 64, cedar="permit(principal, action, resource);", policy_ids={}
        )
        envelope = make_envelope(bundle, producer=FORGER)
        assert await registry.refused(subjects.POLICY_SUBJECT, encode(envelope))  # policy's control stream
        assert await registry.refused(subjects.receipt_subject("a", "b"))  # the ledger's
    finally:
        await registry.nc.close()


async def test_a_revoked_agent_is_shut_out_of_the_bus(writ: Writ, plane: Plane) -> None:
    name = f"bus-{uuid.uuid4().hex[:8]}"
    assert (await asyncio.to_thread(writ, "agent", "register", name)).exit_code == 0
    creds = agent_bus_creds_path(plane.data_dir, name)
    connected = await connect_as(plane, creds, f"agent-{name}")  # let in at once: no server change
    assert (await asyncio.to_thread(writ, "agent", "revoke", name, "--reason", "left")).exit_code == 0
    for _ in range(50):  # the cluster drops its connection as it takes the account update
        if connected.nc.is_closed:
            break
        await asyncio.sleep(0.1)
    assert connected.nc.is_closed
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        await connect_as(plane, creds, f"agent-{name}")


async def test_an_approver_hears_only_its_groups_and_may_only_ask_policy(writ: Writ, plane: Plane) -> None:
    name, group = f"appr-{uuid.uuid4().hex[:8]}", f"grp-{uuid.uuid4().hex[:6]}"
    assert (await asyncio.to_thread(writ, "approver", "register", name, "--group", group)).exit_code == 0
    listed = await asyncio.to_thread(writ, "approvals", "list", "--as", name)  # speaks with its own credential
    assert listed.exit_code == 0 and "no pending approval requests" in listed.stdout, listed.output
    creds = plane.data_dir / "keys" / "approvers" / f"{name}.creds"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    approver = await connect_as(plane, creds, f"approvers.{name}")
    try:
        await approver.nc.subscribe(subjects.approval_notice_subject(group, "*"))  # its own group: fine
        await approver.nc.subscribe(subjects.approval_notice_subject("someone-elses", "*"))
        await approver.nc.flush()
        await asyncio.sleep(0.2)
        assert [e for e in approver.errors if "subscription" in e.lower() and "someone-elses" in e], approver.errors
        assert not [e for e in approver.errors if group in e]
        before = len(approver.errors)
        with pytest.raises(nats.errors.TimeoutError):
            await approver.nc.request("writ.cmd.registry.list_servers", b"{}", timeout=1.0)
        await asyncio.sleep(0.1)
        assert any("permissions violation" in e.lower() for e in approver.errors[before:])
    finally:
        await approver.nc.close()


async def test_an_agent_cannot_hear_of_another_agents_resources_nor_say_one_changed(
    writ: Writ, plane: Plane, agent: Agent
) -> None:
    nosy = f"bus-{uuid.uuid4().hex[:8]}"
    assert (await asyncio.to_thread(writ, "agent", "register", nosy)).exit_code == 0
    other = await connect_as(plane, agent_bus_creds_path(plane.data_dir, nosy), f"agent-{nosy}")
    try:
        await other.nc.subscribe(subjects.resource_updated_subject(nosy))  # its own: fine
        await other.nc.subscribe(subjects.LIST_CHANGED_FILTER)  # every agent's: fine
        for attempt in (subjects.resource_updated_subject(agent.name), "writ.notice.*.resources.updated"):
            await other.nc.subscribe(attempt)
        await other.nc.publish(subjects.resource_updated_subject(nosy), b'{"server": "s", "uri": "u"}')
        await other.nc.publish(subjects.list_changed_subject("s", "resources"), b"")
        await other.nc.flush()
        await asyncio.sleep(0.3)
        refused = [e.lower() for e in other.errors]
        assert sum("subscription" in e and "resources.updated" in e for e in refused) == 2, refused
        assert not [e for e in refused if nosy in e and "subscription" in e], refused
        assert not [e for e in refused if "list_changed" in e and "subscription" in e], refused
        assert sum("publish" in e for e in refused) == 2, refused
    finally:
        await other.nc.close()


async def test_lost_or_pre_jwt_creds_are_issued_again_for_the_registered_key_only(writ: Writ, plane: Plane) -> None:
    name = f"bus-{uuid.uuid4().hex[:8]}"
    assert (await asyncio.to_thread(writ, "agent", "register", name)).exit_code == 0
    creds = agent_bus_creds_path(plane.data_dir, name)
    _jwt, seed = busjwt.creds_parts(creds.read_text())
    creds.unlink()
    creds.with_suffix(".nk").write_text(seed + "\n")  # what an older Writ left: a bare seed
    again = await asyncio.to_thread(writ, "agent", "creds", name)
    assert again.exit_code == 0, again.output
    await (await connect_as(plane, creds, f"agent-{name}")).nc.close()

    stranger = plane.data_dir / f"{name}-other.nk"
    stranger.write_text(busauth.new_seed() + "\n")
    refused = await asyncio.to_thread(writ, "agent", "creds", name, "--seed-file", str(stranger))
    assert refused.exit_code != 0 and "bus_key_mismatch:" in refused.output, refused.output
