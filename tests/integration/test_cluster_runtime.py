"""`writ up --cluster 3` in small: three nats-servers on loopback in one JetStream cluster, built
from deploy/nats/common.conf, streams R3, and bus security held by the cluster itself (NATS JWT
auth): a user JWT the Writ account signed gets in through any member at once, a revocation pushed
to one member disconnects the user on every member without a restart, and a member that was
down gets it at identity's next check. What identity does is done here with the same calls (Issuer, push_revocations)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import nkeys
import pytest
from nats.aio.client import Client, RawCredentials
from typer.testing import CliRunner

from waiting import eventually, reached
from writ.cli import app
from writ.runtime.processes import free_port
from writ.runtime.supervisor import Plane
from writ_common import busauth, busjwt, subjects
from writ_common.service import stage_consumer_config
from writ_identity.ingress import read_nodes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    data_dir = tmp_path_factory.mktemp("cluster") / "data"
    with Plane(data_dir, nats_port=free_port(), redis_port=free_port(), services=(), cluster=3) as plane:
        yield plane


def agent_creds(issuer: busauth.Issuer, agent_id: str) -> tuple[str, str]:
    """(creds text, public key) of a new agent, as identity issues them at registration."""
    seed = busauth.new_seed()
    user = busauth.agent_user(agent_id, busauth.public_nkey(seed))
    return busjwt.creds(issuer.user_jwt(user), seed), user.nkey


async def connect(url: str, creds: str, errors: list[str] | None = None) -> Client:
    async def on_error(exc: Exception) -> None:
        if errors is not None:
            errors.append(str(exc))

    return await nats.connect(
        url, user_credentials=RawCredentials(creds), allow_reconnect=False, connect_timeout=2, error_cb=on_error
    )


async def connects(url: str, creds: str) -> bool:
    try:
        nc = await connect(url, creds)
    except Exception:  # the server refuses an unknown or revoked user (authorization violation)
        return False
    await nc.close()
    return True


async def revoke(cluster: Plane, node: str, revocations: dict[str, int]) -> None:
    """Push the Writ account with these revocations to one member only, as identity does."""
    await busauth.push_revocations([cluster.nats_node_url(node)], cluster.bus.issuer(), revocations)


@pytest.mark.asyncio(loop_scope="session")
async def test_three_members_each_with_its_own_store_and_r3_streams(cluster: Plane) -> None:
    assert cluster.nats_units == ("nats-1", "nats-2", "nats-3")
    assert len(cluster.settings.nats_servers()) == 3
    for name in cluster.nats_units:
        assert (cluster.data_dir / name / "jetstream").is_dir()
        assert (cluster.data_dir / f"{name}.conf").stat().st_mode & 0o077 == 0  # holds the routes' password
    runtime = json.loads((cluster.data_dir / "runtime.json").read_text())
    assert runtime["cluster"] == 3 and runtime["nats_url"] == cluster.nats_url
    nc = await nats.connect(cluster.settings.nats_servers(), **cluster.settings.bus_options())
    try:
        for stream in (subjects.INTENTS_STREAM, subjects.LEDGER_STREAM):
            info = await nc.jetstream().stream_info(stream)
            assert info.config.num_replicas == 3
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2
    finally:
        await nc.close()


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize(("consumer_replicas", "replicas", "in_memory"), [(0, 3, True), (1, 1, False)])
async def test_a_stages_consumer_keeps_its_progress_on_every_member_or_on_one_on_file(
    cluster: Plane, consumer_replicas: int, replicas: int, in_memory: bool
) -> None:
    """By default (``WRIT_CONSUMER_REPLICAS=1``) a stage's consumer lives on one member, on file, so
    that member's restart does not lose its progress; with 0 it is replicated like its stream (in
    memory: it goes on through any node's loss)."""
    settings = cluster.settings.model_copy(update={"consumer_replicas": consumer_replicas, "stream_replicas": 3})
    durable = f"writ-test-{consumer_replicas}-{int(time.time() * 1000)}"
    config = stage_consumer_config(settings, f"{subjects.INTENT_PREFIX}.*.*.submitted", ack_wait=10, max_ack_pending=8)
    nc = await nats.connect(cluster.settings.nats_servers(), **cluster.settings.bus_options())
    js = nc.jetstream()
    try:
        await js.add_consumer(subjects.INTENTS_STREAM, config.evolve(durable_name=durable, name=durable))
        info = await js.consumer_info(subjects.INTENTS_STREAM, durable)
        assert info.cluster is not None and 1 + len(info.cluster.replicas or []) == replicas
        assert bool(info.config.mem_storage) is in_memory
    finally:
        await js.delete_consumer(subjects.INTENTS_STREAM, durable)
        await nc.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_no_member_lets_an_anonymous_client_in(cluster: Plane) -> None:
    for name in cluster.nats_units:
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
            await nats.connect(cluster.nats_node_url(name), allow_reconnect=False, connect_timeout=2)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_user_jwt_not_signed_by_the_account_is_refused_everywhere(cluster: Plane) -> None:
    real = cluster.bus.issuer()
    # The right account named, but signed by a key the account does not list.
    forged = busauth.Issuer(
        account=real.account,
        account_signing_seed=busjwt.new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
        operator_signing_seed=real.operator_signing_seed,
        system_creds=real.system_creds,
    )
    creds, _ = agent_creds(forged, "forger")
    for name in cluster.nats_units:
        assert not await connects(cluster.nats_node_url(name), creds), name


@pytest.mark.asyncio(loop_scope="session")
async def test_an_agent_added_after_start_connects_at_once_through_any_member(cluster: Plane) -> None:
    creds, _ = agent_creds(cluster.bus.issuer(), "newcomer")  # no server changes, no reload
    for name in cluster.nats_units:
        assert await connects(cluster.nats_node_url(name), creds), name


@pytest.mark.asyncio(loop_scope="session")
async def test_a_revoked_agent_is_disconnected_on_every_member_without_a_restart(cluster: Plane) -> None:
    creds, key = agent_creds(cluster.bus.issuer(), "doomed")
    pids = {name: cluster.status_of(name).pid for name in cluster.nats_units}
    connections = [await connect(cluster.nats_node_url(name), creds) for name in cluster.nats_units]
    await revoke(cluster, "nats-1", {key: int(time.time())})  # pushed to one member
    assert await reached(lambda: all(nc.is_closed for nc in connections), 10)
    for name in cluster.nats_units:
        assert not await connects(cluster.nats_node_url(name), creds), name
    assert {name: cluster.status_of(name).pid for name in cluster.nats_units} == pids  # nothing restarted

    # A later push that does not name it (an identity replica behind the log) keeps it revoked,
    # and so does a member's restart (it keeps the newest account, never the preloaded one).
    other, other_key = agent_creds(cluster.bus.issuer(), "doomed-too")
    await revoke(cluster, "nats-2", {other_key: int(time.time())})
    cluster.hold_service("nats-2")
    cluster.release_service("nats-2")
    assert await connects(cluster.nats_node_url("nats-2"), agent_creds(cluster.bus.issuer(), "control")[0])
    for name in cluster.nats_units:
        assert not await connects(cluster.nats_node_url(name), creds), name
        assert not await connects(cluster.nats_node_url(name), other), name


@pytest.mark.asyncio(loop_scope="session")
async def test_a_member_down_during_a_revocation_gets_it_at_identitys_next_check(cluster: Plane) -> None:
    issuer = cluster.bus.issuer()
    creds, key = agent_creds(issuer, "while-down")
    revocations = {key: int(time.time())}
    cluster.hold_service("nats-3")
    try:
        await revoke(cluster, "nats-1", revocations)
    finally:
        cluster.release_service("nats-3")
    assert not await connects(cluster.nats_node_url("nats-2"), creds)
    assert await connects(cluster.nats_node_url("nats-3"), agent_creds(issuer, "control")[0])  # it is up
    # What identity's periodic check does (WRIT_BUS_RESYNC_SECONDS): every node answers which
    # revocations it holds; nats-3 lacks this one (unless NATS's own resolver sync was quicker),
    # so the account is pushed again.
    servers = cluster.settings.nats_servers()
    await busauth.reconcile_revocations(servers, issuer, revocations)
    assert await reached(lambda: not_connecting(cluster, "nats-3", creds), 5)
    assert not await busauth.reconcile_revocations(servers, issuer, revocations)  # all agree: nothing pushed


@pytest.mark.asyncio(loop_scope="session")
async def test_identitys_ingress_reading_adds_up_an_agents_connections_on_every_member_page_by_page(
    cluster: Plane,
) -> None:
    # What identity's ingress guard reads each check: one PING.CONNZ answered by every member, and
    # further pages asked of a member directly. Five connections of one agent over three members.
    issuer = cluster.bus.issuer()
    creds, key = agent_creds(issuer, "chatty")
    nodes = [*cluster.nats_units, "nats-1", "nats-1"]
    connections = [await connect(cluster.nats_node_url(node), creds) for node in nodes]
    system = await busauth.system_connection(cluster.settings.nats_servers(), issuer, 2.0)
    try:
        subject = f"$JS.API.DIRECT.GET.{subjects.INTENTS_STREAM}.{subjects.INTENT_PREFIX}.chatty.x.submitted"
        for n, nc in enumerate(connections, start=1):
            for _ in range(10 * n):
                await nc.publish(subject, b"ab")
            await nc.flush()
        first = {r.server_id: r for r in await read_nodes(system, issuer.account, page=1)}
        assert len(first) == 3
        mine = [c for r in first.values() for c in r.connections.values() if c.user == key and not c.closed]
        assert len(mine) == 5
        assert (sum(c.in_msgs for c in mine), sum(c.in_bytes for c in mine)) == (150, 300)
        # A connection that lives between two checks is read among the closed ones, final counters.
        brief = await connect(cluster.nats_node_url("nats-2"), creds)
        for _ in range(7):
            await brief.publish(subject, b"abc")
        await brief.close()

        async def closed_ones() -> list[tuple[int, int]] | None:
            # The node lists a connection as closed once it has seen the close, a beat after ours.
            later = await read_nodes(system, issuer.account, first, page=1)
            gone = [
                (c.in_msgs, c.in_bytes) for r in later for c in r.connections.values() if c.user == key and c.closed
            ]
            return gone or None

        assert await eventually(closed_ones, 5, "the brief connection listed as closed") == [(7, 21)]
    finally:
        await system.close()
        for nc in connections:
            await nc.close()


async def not_connecting(cluster: Plane, node: str, creds: str) -> bool:
    return not await connects(cluster.nats_node_url(node), creds)


def test_the_deploy_files_with_what_bus_init_writes_are_a_config_nats_server_accepts(tmp_path: Path) -> None:
    from writ.runtime.processes import find_binary

    deploy = Path(__file__).resolve().parents[2] / "deploy" / "nats"
    nats_dir = tmp_path / "nats"
    nats_dir.mkdir()
    for conf in deploy.glob("*.conf"):
        shutil.copyfile(conf, nats_dir / conf.name)
    # What an operator runs before `docker compose up` (README, "Deploying on a NATS cluster").
    done = CliRunner().invoke(app, ["bus", "init", "--dir", str(tmp_path / "bus"), "--nats-dir", str(nats_dir)])
    assert done.exit_code == 0, done.output
    trust = busauth.BusTrust(tmp_path / "bus")
    assert (nats_dir / "auth.conf").read_text() == trust.auth_conf.read_text()
    assert all(trust.creds_file(s).is_file() for s in ("identity", "registry", "policy", "executor", "ledger"))
    for i in (1, 2, 3):
        checked = subprocess.run(
            [find_binary("nats-server"), "-t", "-c", str(nats_dir / f"nats-{i}.conf")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr


def test_remove_node_refuses_a_running_member_and_one_the_cluster_does_not_have(cluster: Plane) -> None:
    """`writ bus remove-node` is for a node lost for good (soak-cluster removes one and every
    intent still gets its receipt): a running member, or a name no member has, is refused."""
    runner = CliRunner()
    running = runner.invoke(app, ["--data-dir", str(cluster.data_dir), "bus", "remove-node", "nats-2"])
    assert running.exit_code == 1
    assert "node_running: nats-2 is up" in " ".join(running.output.split()), running.output
    unknown = runner.invoke(app, ["--data-dir", str(cluster.data_dir), "bus", "remove-node", "nats-9"])
    assert unknown.exit_code == 1
    assert "remove_refused: JetStream did not remove nats-9" in " ".join(unknown.output.split()), unknown.output
    assert all(cluster.status_of(name).state == "running" for name in cluster.nats_units)
