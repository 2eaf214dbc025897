"""Ed25519 signing and verification (PyNaCl), keys as base64 text."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey


class SignatureInvalid(Exception):
    """The signature does not verify with the given key."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


def generate_key() -> SigningKey:
    """Return a fresh Ed25519 signing key."""
    return SigningKey.generate()


def public_key_b64(key: SigningKey) -> str:
    """The base64 public half of ``key``."""
    return b64(bytes(key.verify_key))


def key_id(public_key: str) -> str:
    """A short fingerprint of a base64 public key, for logs and receipts."""
    return "ed25519:" + hashlib.sha256(unb64(public_key)).hexdigest()[:16]


def fingerprint(public_key: str) -> str:
    """The full sha256 fingerprint of a base64 public key, to pin it by: ``sha256:<64 hex>``."""
    return "sha256:" + hashlib.sha256(unb64(public_key)).hexdigest()


def sign(key: SigningKey, message: bytes) -> str:
    """Sign ``message``; returns the detached signature as base64."""
    return b64(key.sign(message).signature)


def verify(public_key: str, message: bytes, signature: str) -> None:
    """Verify a detached base64 signature.

    Raises:
        SignatureInvalid: the key or signature is malformed, or the signature does not match.
    """
    try:
        VerifyKey(unb64(public_key)).verify(message, unb64(signature))
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise SignatureInvalid(str(exc) or "signature does not match") from exc


def save_key(key: SigningKey, path: Path) -> None:
    """Write a private key (base64 seed) readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(b64(bytes(key)) + "\n")
    os.chmod(path, 0o600)


def load_key(path: str | Path) -> SigningKey:
    """Read a private key written by :func:`save_key` (or ``writ agent register``).

    Args:
        path: the key file, as a path or a string.
    """
    return SigningKey(unb64(Path(path).read_text().strip()))


def load_or_create_key(path: Path) -> SigningKey:
    """Load the key at ``path``, creating it on first use."""
    if path.exists():
        return load_key(path)
    key = generate_key()
    save_key(key, path)
    return key
