"""Low-severity breaks: a crafted views cursor must be a 400, not a 500; the views file and the
services' log files must be readable only by the user who runs the plane (like the keys)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import stat
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from inprocess import Spine

from writ.runtime.processes import spawn
from writ_common import commands
from writ_ledger.views.runner import Views

CRAFTED = [
    base64.urlsafe_b64encode(b"v1:" + b"9" * 40).decode().rstrip("="),  # beyond SQLite's integers
    base64.urlsafe_b64encode("v1:\u00b2".encode()).decode().rstrip("="),  # a digit to isdigit() only
    base64.urlsafe_b64encode(b"v1:-1").decode(),
    "%%%",
    "v1",
]


def http(url: str, token: str) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.security
@pytest.mark.asyncio(loop_scope="session")
async def test_a_crafted_views_cursor_is_refused_as_invalid_cursor_not_a_server_error(spine: Spine) -> None:
    token = "writv_" + secrets.token_urlsafe(32)
    digest = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    await commands.call(spine.nc, "identity", "issue_reader_token", {"name": "cursor", "token_hash": digest})
    for cursor in CRAFTED:
        status, body = await asyncio.to_thread(http, f"{spine.views_url}/intents?cursor={cursor}", token)
        assert (status, body.get("error")) == (400, "invalid_cursor"), (cursor, status, body)


@pytest.mark.security
def test_the_views_file_is_readable_only_by_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "ledger" / "views.sqlite3"
    path.parent.mkdir()
    path.touch(mode=0o644)  # as an older version left it
    path.chmod(0o644)
    views = Views(path)
    try:
        views.store.apply("WRIT_INTENTS", [(1, None)])
        for file in (path, *path.parent.glob("views.sqlite3*")):
            assert stat.S_IMODE(file.stat().st_mode) & 0o077 == 0, f"{file} is {oct(file.stat().st_mode)}"
    finally:
        views.store.close()
        views.release()


@pytest.mark.security
def test_a_service_log_is_readable_only_by_its_owner(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "identity.log"
    proc = spawn("quiet", [sys.executable, "-c", "print('a line a stranger must not read')"], log)
    assert proc.popen.wait(timeout=30) == 0
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) & 0o077 == 0
