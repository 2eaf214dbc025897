"""Any local process tries to reach the plane's Redis (nonces, rate limits, leases) with what it can
read on the host: runtime.json and the data directory. Redis must ask for a password that only the
plane's user can read, and runtime.json must be private and hold no password.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError

from writ.runtime.supervisor import Plane

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


async def test_a_local_process_cannot_reset_nonces_or_rate_limits_through_redis(plane: Plane) -> None:
    runtime = plane.data_dir / "runtime.json"
    assert private(runtime), oct(runtime.stat().st_mode)
    written = json.loads(runtime.read_text())
    url = str(written["redis_url"])
    assert "@" not in url, "runtime.json carries no Redis password"
    # What a stranger would do with the URL: wipe nonces and counters.
    stranger = aioredis.from_url(url, socket_timeout=2.0)
    try:
        with pytest.raises((AuthenticationError, ResponseError), match=r"NOAUTH|[Aa]uthenticat"):
            await stranger.flushall()
    finally:
        await stranger.aclose()
    # The password lives in a file only the plane's user can read, and it works.
    password_file = plane.settings.redis_password_file
    assert password_file is not None and private(password_file) and private(password_file.parent)
    owner = aioredis.from_url(url, password=password_file.read_text().strip(), socket_timeout=2.0)
    try:
        assert await owner.ping()
    finally:
        await owner.aclose()
