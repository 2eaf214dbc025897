"""Guessing arguments from their digest: ``args_digest`` is keyed with a plane secret, so a
low-entropy argument (a PIN, a yes/no, an amount) cannot be recovered by hashing every candidate."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from writ_common.digest import args_digest, sha256_digest
from writ_common.settings import WritSettings

pytestmark = [pytest.mark.security, pytest.mark.unit]


def test_a_four_digit_pin_cannot_be_brute_forced_from_its_digest(tmp_path: Path) -> None:
    key = WritSettings(data_dir=tmp_path).resolved_args_digest_key()
    digest = args_digest({"pin": "0420"}, key=key)
    guesses = {sha256_digest({"pin": f"{n:04d}"}) for n in range(10_000)}
    assert digest not in guesses
    assert digest == args_digest({"pin": "0420"}, key=key)  # still binds: same arguments, same digest
    assert digest != args_digest({"pin": "0420"}, key=os.urandom(32))  # and needs the plane's key


def test_the_plane_secret_is_generated_once_readable_only_by_its_owner(tmp_path: Path) -> None:
    settings = WritSettings(data_dir=tmp_path)
    first = settings.resolved_args_digest_key()
    path = settings.args_digest_key_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert WritSettings(data_dir=tmp_path).resolved_args_digest_key() == first


def test_a_deployment_sets_the_plane_secret_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = os.urandom(32)
    monkeypatch.setenv("WRIT_ARGS_DIGEST_KEY", base64.b64encode(secret).decode())
    settings = WritSettings(data_dir=tmp_path)
    assert settings.resolved_args_digest_key() == secret
    assert not settings.args_digest_key_file().exists()


def test_a_short_plane_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRIT_ARGS_DIGEST_KEY", base64.b64encode(b"1234").decode())
    with pytest.raises(ValueError, match="32"):
        WritSettings(data_dir=tmp_path).resolved_args_digest_key()
