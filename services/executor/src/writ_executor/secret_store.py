"""The executor's secret store: one JSON file of values encrypted with PyNaCl's SecretBox.

Layout under ``<data>/executor/secrets/`` (directory 0700, files 0600):

* ``store.json``  names in clear, each value sealed (XSalsa20-Poly1305, bound to its name), when it
  was set, and a sealed check value that tells a wrong key from a damaged file;
* ``key``         the key, generated once, only when ``WRIT_SECRETS_KEY`` is not set;
* ``lock``        serializes writers (several executor processes may share the directory).

Values are always encrypted at rest. With ``WRIT_SECRETS_KEY`` the key lives outside the data
directory; without it the generated key file sits beside the store, which keeps values out of
greps, dumps and copies of the store alone, but not from someone who can read the whole directory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from nacl.utils import random

from writ_common.errors import CodedError

FORMAT = 1
CHECK = b"writ-secrets-check"


class SecretStoreError(CodedError):
    """The store cannot do what was asked; ``code`` is stable, ``message`` is for people (never a value)."""


@dataclass(frozen=True, slots=True)
class SecretEntry:
    name: str
    set_at: str


def decode_key(text: str) -> bytes:
    """A ``WRIT_SECRETS_KEY``: 32 bytes, base64 (standard or URL-safe).

    Raises:
        SecretStoreError: ``invalid_secrets_key`` when it is not.
    """
    try:
        key = base64.b64decode(text.strip().replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != SecretBox.KEY_SIZE:
        raise SecretStoreError(
            "invalid_secrets_key",
            "WRIT_SECRETS_KEY must be 32 random bytes in base64, e.g."
            ' `python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"`',
        )
    return key


class SecretStore:
    """Set, list, delete and read secrets; reads are cached until the file changes."""

    def __init__(self, directory: Path, env_key: str | None = None) -> None:
        self.directory = directory
        self._env_key = env_key
        self._cache: tuple[tuple[int, int, int], dict[str, str]] | None = None

    @property
    def store_file(self) -> Path:
        return self.directory / "store.json"

    @property
    def key_file(self) -> Path:
        return self.directory / "key"

    # -- reading ------------------------------------------------------------------------------

    def values(self) -> dict[str, str]:
        """Every secret by name, decrypted (cached while the file is unchanged).

        Raises:
            SecretStoreError: ``secrets_locked`` (wrong or missing key), ``secrets_unreadable``.
        """
        try:
            st = self.store_file.stat()
        except FileNotFoundError:
            return {}
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cache is None or self._cache[0] != signature:
            data = self._read()
            box = self._box(data, create=False)
            self._cache = (signature, {name: self._open(box, name, e["box"]) for name, e in data["secrets"].items()})
        return dict(self._cache[1])

    def entries(self) -> list[SecretEntry]:
        """Names and when each was set; no value is decrypted."""
        data = self._read()
        return [SecretEntry(name, e["set_at"]) for name, e in sorted(data["secrets"].items())]

    # -- writing ------------------------------------------------------------------------------

    def put(self, name: str, value: str) -> SecretEntry:
        """Set or replace ``name``."""
        with self._locked():
            data = self._read()
            box = self._box(data, create=True)
            entry = SecretEntry(name, datetime.now(UTC).isoformat())
            sealed = box.encrypt(name.encode() + b"\0" + value.encode())
            data["secrets"][name] = {"box": base64.b64encode(sealed).decode(), "set_at": entry.set_at}
            self._write(data)
        return entry

    def delete(self, name: str) -> bool:
        """Remove ``name``; False when there was no such secret."""
        with self._locked():
            data = self._read()
            if data["secrets"].pop(name, None) is None:
                return False
            self._write(data)
        return True

    # -- internals ----------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.store_file.read_bytes())
        except FileNotFoundError:
            return {"format": FORMAT, "secrets": {}}
        except (OSError, ValueError) as exc:
            raise SecretStoreError("secrets_unreadable", f"cannot read {self.store_file}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("secrets"), dict):
            raise SecretStoreError("secrets_unreadable", f"{self.store_file} is not a Writ secret store")
        return data

    def _box(self, data: dict[str, Any], *, create: bool) -> SecretBox:
        source = "env" if self._env_key else "file"
        if "check" in data and data.get("key") != source:
            if data.get("key") == "env":
                why = "the store was encrypted with WRIT_SECRETS_KEY, which this executor was not given"
            else:
                why = "the store was encrypted with the generated key file; WRIT_SECRETS_KEY cannot open it"
            raise SecretStoreError("secrets_locked", f"{why} (delete {self.directory} and set the secrets again)")
        key = decode_key(self._env_key) if self._env_key else self._file_key(create=create or "check" not in data)
        box = SecretBox(key)
        if "check" in data:
            try:
                box.decrypt(base64.b64decode(data["check"]))
            except (CryptoError, ValueError) as exc:
                raise SecretStoreError("secrets_locked", "WRIT_SECRETS_KEY does not open the secret store") from exc
        else:
            data["key"], data["check"] = source, base64.b64encode(box.encrypt(CHECK)).decode()
        return box

    def _file_key(self, *, create: bool) -> bytes:
        try:
            return base64.b64decode(self.key_file.read_bytes().strip())
        except FileNotFoundError:
            if not create:
                raise SecretStoreError("secrets_locked", f"the store's key file {self.key_file} is gone") from None
        key = random(SecretBox.KEY_SIZE)
        self._ensure_dir()
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64encode(key) + b"\n")
        return key

    @staticmethod
    def _open(box: SecretBox, name: str, sealed: str) -> str:
        try:
            plain = box.decrypt(base64.b64decode(sealed))
        except (CryptoError, ValueError) as exc:
            raise SecretStoreError("secrets_unreadable", f"secret {name!r} cannot be decrypted") from exc
        bound, _, value = plain.partition(b"\0")
        if bound != name.encode():
            raise SecretStoreError("secrets_unreadable", f"secret {name!r} was sealed under another name")
        return value.decode()

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.store_file.with_name(f".store.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.store_file)

    def _ensure_dir(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_dir()
        fd = os.open(self.directory / "lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
