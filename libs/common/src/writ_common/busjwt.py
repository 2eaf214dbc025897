"""NATS decentralized auth: operator, account and user JWTs signed with nkeys, and ``.creds`` files.

The cluster itself holds who may say what: every nats-server trusts one operator; the operator
signs the Writ account (and the system account); the account's signing key (held by identity)
signs one user JWT per service, agent, approver and operator, carrying that user's publish and
subscribe allow lists (from :mod:`writ_common.busauth`) and its limits. A user JWT needs no server
change to be accepted; revoking one is a new account JWT listing it under ``revocations``, pushed
to the cluster on ``$SYS.REQ.CLAIMS.UPDATE`` (every node disconnects it).

The encoding is NATS JWT v2 (github.com/nats-io/jwt): ``base64url(header).base64url(claims)``,
signed with Ed25519 by the issuer's nkey, header ``{"typ":"JWT","alg":"ed25519-nkey"}``, ``jti``
the base32 SHA-256 of the claims. Written here (about a hundred lines) rather than taken from the
``nats-jwt`` PyPI package, which calls itself untested and pulls five dependencies (one pinned to
``pytz<2025``) for what is a JSON document and a signature.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nkeys
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
NO_LIMIT = -1
# What each user's connection may do at most, enforced by nats-server per connection (its
# client.applyAccountLimits reads the user JWT's ``payload`` and ``subs``; ``data`` is carried
# but not enforced per user, so it is left unlimited here).
AGENT_MAX_PAYLOAD = 256 * 1024  # bytes per message: an intent with its arguments, well under max_payload
AGENT_MAX_SUBS = 64  # an SDK needs a handful (its inbox, receipts, a notice)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_seed(prefix: int) -> str:
    """A fresh nkey seed of kind ``prefix`` (``nkeys.PREFIX_BYTE_OPERATOR``, ``_ACCOUNT``, ``_USER``)."""
    return str(nkeys.encode_seed(os.urandom(32), prefix).decode())


def public_key(seed: str) -> str:
    return str(nkeys.from_seed(seed.encode()).public_key.decode())


def encode(claims_nats: Mapping[str, Any], *, subject: str, name: str, issuer_seed: str, iat: int | None = None) -> str:
    """A signed NATS JWT whose ``nats`` section is ``claims_nats`` (with ``type`` and ``version``)."""
    issuer = nkeys.from_seed(issuer_seed.encode())
    claims: dict[str, Any] = {
        "jti": "",
        "iat": int(time.time()) if iat is None else iat,
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**claims_nats, "version": 2},
    }
    unsigned = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    claims["jti"] = base64.b32encode(hashlib.sha256(unsigned).digest()).decode().rstrip("=")
    signing_input = f"{_b64(json.dumps(HEADER).encode())}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
    return f"{signing_input}.{_b64(issuer.sign(signing_input.encode()))}"


def _raw_public_key(key: str) -> bytes:
    raw = base64.b32decode(key + "=" * (-len(key) % 8))
    if len(raw) != 35 or nkeys.crc16_checksum(raw[:-2]) != raw[-2:]:
        raise ValueError(f"{key[:8]}... is not an nkey public key")
    return raw[1:-2]


class InvalidJwt(ValueError):
    """Not a NATS JWT, or its signature does not verify against its issuer."""


def decode(token: str) -> dict[str, Any]:
    """The claims of ``token`` once its signature verifies against its own ``iss``.

    Raises:
        InvalidJwt: malformed, or signed by a key other than ``iss``.
    """
    try:
        header, claims, signature = token.split(".")
        body: dict[str, Any] = json.loads(_unb64(claims))
        if json.loads(_unb64(header)).get("alg") != HEADER["alg"]:
            raise InvalidJwt("not an ed25519-nkey JWT")
        VerifyKey(_raw_public_key(str(body["iss"]))).verify(f"{header}.{claims}".encode(), _unb64(signature))
    except InvalidJwt:
        raise
    except (ValueError, KeyError, TypeError, BadSignatureError) as exc:
        raise InvalidJwt(f"not a valid NATS JWT: {exc}") from exc
    return body


# -- the three kinds of claims --


def operator_jwt(operator_seed: str, *, system_account: str, signing_keys: Sequence[str], name: str = "writ") -> str:
    """The operator every node trusts: it names the system account and the keys that may sign accounts."""
    nats = {"type": "operator", "system_account": system_account, "signing_keys": sorted(signing_keys)}
    return encode(nats, subject=public_key(operator_seed), name=name, issuer_seed=operator_seed)


def account_limits(*, jetstream: bool) -> dict[str, Any]:
    limits: dict[str, Any] = {
        "subs": NO_LIMIT,
        "data": NO_LIMIT,
        "payload": NO_LIMIT,
        "imports": NO_LIMIT,
        "exports": NO_LIMIT,
        "wildcards": True,
        "conn": NO_LIMIT,
        "leaf": NO_LIMIT,
    }
    if jetstream:  # disk and memory storage other than 0 enable JetStream for the account
        limits |= {"mem_storage": NO_LIMIT, "disk_storage": NO_LIMIT, "streams": NO_LIMIT, "consumer": NO_LIMIT}
    return limits


def account_jwt(
    issuer_seed: str,
    account: str,
    *,
    name: str,
    signing_keys: Sequence[str] = (),
    revocations: Mapping[str, int] | None = None,
    jetstream: bool = True,
    iat: int | None = None,
) -> str:
    """An account signed by the operator (or an operator signing key).

    Args:
        revocations: user public key -> unix time: every JWT of that user issued at or before that
            time is refused, and its connections are closed when the cluster takes this JWT.
    """
    nats: dict[str, Any] = {"type": "account", "limits": account_limits(jetstream=jetstream)}
    if signing_keys:
        nats["signing_keys"] = sorted(signing_keys)
    if revocations:
        nats["revocations"] = dict(sorted(revocations.items()))
    return encode(nats, subject=account, name=name, issuer_seed=issuer_seed, iat=iat)


def _allow(subjects: Sequence[str]) -> dict[str, list[str]]:
    # An empty allow list means "everything" to nats-server: nothing is spelled as deny ">".
    return {"allow": list(subjects)} if subjects else {"deny": [">"]}


@dataclass(frozen=True)
class UserLimits:
    """What nats-server enforces per connection of one user (``-1``: no limit beyond the server's)."""

    payload: int = NO_LIMIT
    subs: int = NO_LIMIT


AGENT_LIMITS = UserLimits(payload=AGENT_MAX_PAYLOAD, subs=AGENT_MAX_SUBS)


def user_jwt(
    signing_seed: str,
    user: str,
    *,
    account: str,
    name: str,
    publish: Sequence[str] | None = None,
    subscribe: Sequence[str] | None = None,
    allow_responses: bool = False,
    limits: UserLimits | None = None,
    iat: int | None = None,
) -> str:
    """A user of ``account`` signed by one of its signing keys (or the account key itself).

    Args:
        publish, subscribe: allow lists; None: no restriction (the operator's and runtime's user).
        allow_responses: may publish one reply to any request it received.
    """
    limits = limits or UserLimits()
    nats: dict[str, Any] = {"type": "user", "subs": limits.subs, "data": NO_LIMIT, "payload": limits.payload}
    if public_key(signing_seed) != account:
        nats["issuer_account"] = account
    if publish is not None:
        nats["pub"] = _allow(publish)
    if subscribe is not None:
        nats["sub"] = _allow(subscribe)
    if allow_responses:
        nats["resp"] = {"max": 1, "ttl": 0}  # ttl 0: the server's default expiry
    return encode(nats, subject=user, name=name, issuer_seed=signing_seed, iat=iat)


def creds(jwt: str, seed: str) -> str:
    """The ``.creds`` text nats clients read (nats-py ``user_credentials``, the nats CLI's ``--creds``)."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def creds_parts(text: str) -> tuple[str, str]:
    """The (JWT, seed) of a ``.creds`` text.

    Raises:
        ValueError: not a creds file.
    """
    blocks = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(("-", "*", "NKEY"))]
    jwt = next((b for b in blocks if b.count(".") == 2), None)
    seed = next((b for b in blocks if b.startswith("SU")), None)
    if jwt is None or seed is None:
        raise ValueError("not a NATS creds file (a user JWT and a user nkey seed)")
    return jwt, seed
