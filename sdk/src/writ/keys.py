"""Agent key files on disk: where they live, created once (0600, never overwritten), read with clear errors."""

from __future__ import annotations

import binascii
import os
from pathlib import Path

from nacl.signing import SigningKey

from writ_common.errors import CodedError
from writ_common.signing import b64, public_key_b64, unb64


class KeyFileError(CodedError):
    """A key file is missing, already exists, or does not hold a key; ``code`` is stable."""


def agent_key_path(data_dir: Path, agent_id: str) -> Path:
    """Where ``writ agent register`` keeps an agent's private key."""
    return data_dir / "keys" / "agents" / f"{agent_id}.key"


def agent_bus_creds_path(data_dir: Path, agent_id: str) -> Path:
    """Where ``writ agent register`` keeps an agent's bus credential: the NATS user JWT identity
    issued for it and its nkey seed, as one ``.creds`` file (0600)."""
    return data_dir / "keys" / "agents" / f"{agent_id}.creds"


def approver_key_path(data_dir: Path, approver_id: str) -> Path:
    """Where ``writ approver register`` (without ``--public-key``) keeps an approver's private key."""
    return data_dir / "keys" / "approvers" / f"{approver_id}.key"


def approver_bus_creds_path(data_dir: Path, approver_id: str) -> Path:
    """An approver's bus credential (NATS user JWT and nkey seed, 0600), from ``writ approver register``."""
    return data_dir / "keys" / "approvers" / f"{approver_id}.creds"


def ensure_absent(path: Path, agent_id: str) -> None:
    """Refuse to go on if ``path`` already holds a key: overwriting it would lose that identity.

    Raises:
        KeyFileError: ``key_exists``.
    """
    if path.exists():
        raise KeyFileError(
            "key_exists",
            f"a key for agent {agent_id!r} already exists at {path}; "
            "register it with `--key` to reuse it, or move it away to start over",
        )


def write_new_key(path: Path, key: SigningKey) -> None:
    """Write a private key readable by the owner only; fails rather than replace an existing file.

    Raises:
        KeyFileError: ``key_exists`` if the file appeared meanwhile, ``key_unwritable`` on I/O errors.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError("key_exists", f"{path} already exists; not overwriting it") from exc
    except OSError as exc:
        raise KeyFileError("key_unwritable", f"cannot write {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(b64(bytes(key)) + "\n")


def read_key(path: Path) -> SigningKey:
    """Read a private key written by :func:`write_new_key` (or ``writ_common.signing.save_key``).

    Raises:
        KeyFileError: ``key_missing`` or ``key_invalid``.
    """
    try:
        text = path.read_text().strip()
    except FileNotFoundError as exc:
        raise KeyFileError(
            "key_missing", f"no key file at {path}; register the agent with `writ agent register` or pass --key PATH"
        ) from exc
    except OSError as exc:
        raise KeyFileError("key_missing", f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        seed = unb64(text)
        if len(seed) != 32:
            raise ValueError("not 32 bytes")
        return SigningKey(seed)
    except (ValueError, binascii.Error) as exc:
        raise KeyFileError("key_invalid", f"{path} does not hold a base64 Ed25519 private key (32 bytes)") from exc


def public_key_path(private: Path) -> Path:
    """Where :func:`write_public_key` puts the public half of a private key file: ``NAME.pub``."""
    return private.with_suffix(".pub")


def write_public_key(path: Path, key: SigningKey) -> None:
    """The public half, world-readable: it is what an operator registers."""
    path.write_text(public_key_b64(key) + "\n")


def read_public_key(path: Path) -> str:
    """A base64 Ed25519 public key from a ``.pub`` file written by :func:`write_public_key`.

    Raises:
        KeyFileError: ``key_missing`` or ``key_invalid`` (which also names a private key given by mistake).
    """
    if path.suffix == ".key":
        raise KeyFileError(
            "key_invalid", f"{path} is a private key file: register its public half ({path.with_suffix('.pub')})"
        )
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise KeyFileError("key_missing", f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        raw = unb64(text)
    except (ValueError, binascii.Error) as exc:
        raise KeyFileError("key_invalid", f"{path} does not hold a base64 Ed25519 public key") from exc
    if len(raw) != 32:
        raise KeyFileError("key_invalid", f"{path} does not hold a base64 Ed25519 public key (32 bytes)")
    return text
