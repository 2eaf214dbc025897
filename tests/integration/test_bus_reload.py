"""Bus users reload all-or-nothing against a real nats-server with nkey auth: a users file the server
would refuse is never put in force, the previous one stays, and later reloads still work."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from writ.runtime.processes import ManagedProcess, start_nats
from writ_common import busauth

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[tuple[busauth.EmbeddedBus, ManagedProcess]]:
    bus = busauth.prepare_embedded(tmp_path, ["identity"])
    proc = start_nats(tmp_path / "nats", bus=bus)
    try:
        yield bus, proc
    finally:
        proc.stop()


async def connects(url: str, seed: str) -> bool:
    try:
        nc = await nats.connect(url, nkeys_seed_str=seed, allow_reconnect=False, connect_timeout=2)
    except Exception:  # the server refuses an unknown nkey (authorization violation)
        return False
    await nc.close()
    return True


async def test_a_users_file_the_server_refuses_is_rolled_back(bus: tuple[busauth.EmbeddedBus, ManagedProcess]) -> None:
    embedded, proc = bus
    seeds = {name: busauth.new_seed() for name in ("ann", "bob", "cid")}
    ann = busauth.agent_user("ann", busauth.public_nkey(seeds["ann"]))
    assert busauth.publish_users(embedded.auth_dir, [ann])
    assert await connects(proc.url, seeds["ann"])
    before = embedded.users_conf.read_text()

    # Built around the name check, as an old log might hold it: a subject the server cannot parse.
    broken = busauth.BusUser("bob", busauth.public_nkey(seeds["bob"]), subscribe=("writ.notice.approvals.a.>.>",))
    with pytest.raises(busauth.BusReloadFailed) as refused:
        busauth.publish_users(embedded.auth_dir, [ann, broken])
    assert refused.value.code == "bus_reload_failed" and "not a valid subject" in refused.value.message
    assert embedded.users_conf.read_text() == before
    assert await connects(proc.url, seeds["ann"]) and not await connects(proc.url, seeds["bob"])

    cid = busauth.agent_user("cid", busauth.public_nkey(seeds["cid"]))
    assert busauth.publish_users(embedded.auth_dir, [cid])  # a later change still takes effect
    assert await connects(proc.url, seeds["cid"]) and not await connects(proc.url, seeds["ann"])
