"""`writ up --cluster 3` in small: three nats-servers on loopback in one JetStream cluster, built
from deploy/nats/common.conf, streams R3, and the bus users reloaded on every member (a member
that is down is skipped and reads the users file when it comes back)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import nats
import pytest

from writ.runtime.processes import free_port
from writ.runtime.supervisor import Plane
from writ_common import busauth, subjects

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    data_dir = tmp_path_factory.mktemp("cluster") / "data"
    with Plane(data_dir, nats_port=free_port(), redis_port=free_port(), services=(), cluster=3) as plane:
        yield plane


async def connects(url: str, seed: str) -> bool:
    try:
        nc = await nats.connect(url, nkeys_seed_str=seed, allow_reconnect=False, connect_timeout=2)
    except Exception:  # the server refuses an unknown nkey (authorization violation)
        return False
    await nc.close()
    return True


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
    # The check identity runs before each reload accepts the generated config.
    assert "nats-1.conf" in cluster.bus.check_file.read_text()
    busauth.check_nats_config(cluster.bus.auth_dir)


async def test_no_member_lets_an_anonymous_client_in(cluster: Plane) -> None:
    for name in cluster.nats_units:
        with pytest.raises(Exception):  # noqa: B017 - nats-py raises its own auth errors
            await nats.connect(cluster.nats_node_url(name), allow_reconnect=False, connect_timeout=2)


async def test_a_new_agent_can_connect_to_every_member_and_a_member_down_is_skipped(cluster: Plane) -> None:
    seed = busauth.new_seed()
    ann = busauth.agent_user("ann", busauth.public_nkey(seed))
    assert busauth.publish_users(cluster.bus.auth_dir, [ann])
    for name in cluster.nats_units:
        assert await connects(cluster.nats_node_url(name), seed), name

    cluster.hold_service("nats-3")
    try:
        other = busauth.new_seed()
        bob = busauth.agent_user("bob", busauth.public_nkey(other))
        assert busauth.publish_users(cluster.bus.auth_dir, [bob])  # two members reload, the third is down
        for name in ("nats-1", "nats-2"):
            assert await connects(cluster.nats_node_url(name), other), name
            assert not await connects(cluster.nats_node_url(name), seed), name
    finally:
        cluster.release_service("nats-3")
    assert await connects(cluster.nats_node_url("nats-3"), other)  # read at its start
    assert not await connects(cluster.nats_node_url("nats-3"), seed)
