"""An attacker on the network tries the bus itself: a user JWT it minted (naming Writ's account,
signed by its own key), an agent's JWT lifted from a creds file without that agent's seed, and an
agent flooding with messages the size of the server's max_payload. The cluster refuses each by
itself (NATS JWT auth), with no Writ process in the path."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import nats
import nkeys
import pytest
from nats.aio.client import RawCredentials

from cli_runner import Writ
from waiting import reached
from writ.keys import agent_bus_creds_path
from writ.runtime.supervisor import Plane
from writ_common import busauth, busjwt, subjects

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]


async def register(writ: Writ, plane: Plane) -> tuple[str, str]:
    """A fresh agent, registered by the CLI; returns (name, its creds text)."""
    name = f"cred-{uuid.uuid4().hex[:8]}"
    done = await asyncio.to_thread(writ, "agent", "register", name)
    assert done.exit_code == 0, done.output
    return name, agent_bus_creds_path(plane.data_dir, name).read_text()


async def refused(plane: Plane, creds: str) -> bool:
    try:
        nc = await nats.connect(
            plane.nats_url, user_credentials=RawCredentials(creds), allow_reconnect=False, connect_timeout=2
        )
    except nats.errors.Error as exc:
        return "authorization" in str(exc).lower()
    await nc.close()
    return False


async def test_a_user_jwt_minted_with_a_key_the_account_does_not_list_is_refused(plane: Plane) -> None:
    account = plane.bus.issuer().account
    seed = busauth.new_seed()
    user = busauth.BusUser("intruder", busauth.public_nkey(seed), admin=True)  # asks for everything
    minted = busjwt.user_jwt(busjwt.new_seed(nkeys.PREFIX_BYTE_ACCOUNT), user.nkey, account=account, name=user.name)
    assert await refused(plane, busjwt.creds(minted, seed))


async def test_an_agents_jwt_without_its_seed_is_refused(writ: Writ, plane: Plane) -> None:
    _name, creds = await register(writ, plane)
    lifted, _seed = busjwt.creds_parts(creds)
    assert await refused(plane, busjwt.creds(lifted, busauth.new_seed()))  # the nonce is signed by another key


async def test_an_agent_flooding_with_oversized_messages_is_cut_off_and_another_is_not(
    writ: Writ, plane: Plane
) -> None:
    (flooder_name, flooder_creds), (_, other_creds) = await register(writ, plane), await register(writ, plane)
    connect = {"allow_reconnect": False, "connect_timeout": 2}
    flooder = await nats.connect(plane.nats_url, user_credentials=RawCredentials(flooder_creds), **connect)
    other = await nats.connect(plane.nats_url, user_credentials=RawCredentials(other_creds), **connect)
    try:
        # Its own submission subject: below the server's max_payload (2 MiB), above its own limit.
        subject = f"writ.intent.{flooder_name}.flood.submitted"
        with contextlib.suppress(Exception):  # the server may close the connection mid-flush
            await flooder.publish(subject, b"x" * (busjwt.AGENT_MAX_PAYLOAD + 1))
            await flooder.flush(timeout=2)
        await reached(lambda: flooder.is_closed, 5)
        assert flooder.is_closed and "maximum payload" in str(flooder.last_error).lower(), flooder.last_error
        assert await stored(plane, subject) == 0
        await other.publish("writ.cmd.registry.list_tools", b"{}")
        await other.flush(timeout=2)
        assert other.is_connected
    finally:
        await flooder.close()
        await other.close()


async def stored(plane: Plane, subject: str) -> int:
    nc = await nats.connect(plane.nats_url, **plane.settings.bus_options())
    try:
        info = await nc.jetstream().stream_info(subjects.INTENTS_STREAM, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()
