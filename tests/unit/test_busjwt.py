"""NATS JWTs as the servers read them: signed by the issuer's nkey, verifiable by its public key,
with the claims nats-server enforces (allow lists, responses, payload and subscription limits)."""

from __future__ import annotations

import nkeys
import pytest

from writ_common import busjwt

pytestmark = pytest.mark.unit


def test_a_user_jwt_carries_its_allow_lists_and_limits_and_verifies() -> None:
    account = busjwt.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
    signing = busjwt.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
    user = busjwt.public_key(busjwt.new_seed(nkeys.PREFIX_BYTE_USER))
    token = busjwt.user_jwt(
        signing,
        user,
        account=busjwt.public_key(account),
        name="agent-ann",
        publish=["writ.intent.ann.*.submitted"],
        subscribe=[],
        allow_responses=True,
        limits=busjwt.UserLimits(payload=1024, subs=4),
    )
    claims = busjwt.decode(token)
    assert claims["iss"] == busjwt.public_key(signing) and claims["sub"] == user
    nats = claims["nats"]
    assert nats["type"] == "user" and nats["version"] == 2 and nats["issuer_account"] == busjwt.public_key(account)
    assert nats["pub"] == {"allow": ["writ.intent.ann.*.submitted"]}
    assert nats["sub"] == {"deny": [">"]}  # an empty allow list would mean everything to the server
    assert nats["resp"] == {"max": 1, "ttl": 0}
    assert (nats["payload"], nats["subs"]) == (1024, 4)


def test_a_tampered_or_foreign_jwt_does_not_verify() -> None:
    operator = busjwt.new_seed(nkeys.PREFIX_BYTE_OPERATOR)
    account = busjwt.public_key(busjwt.new_seed(nkeys.PREFIX_BYTE_ACCOUNT))
    token = busjwt.account_jwt(operator, account, name="writ", revocations={"UABC": 5})
    assert busjwt.decode(token)["nats"]["revocations"] == {"UABC": 5}
    header, _claims, signature = token.split(".")
    forged = busjwt.account_jwt(busjwt.new_seed(nkeys.PREFIX_BYTE_OPERATOR), account, name="writ")
    with pytest.raises(busjwt.InvalidJwt):
        busjwt.decode(f"{header}.{forged.split('.')[1]}.{signature}")
    with pytest.raises(busjwt.InvalidJwt):
        busjwt.decode("not.a.jwt")


def test_creds_round_trip() -> None:
    seed = busjwt.new_seed(nkeys.PREFIX_BYTE_USER)
    token = busjwt.user_jwt(seed, busjwt.public_key(seed), account=busjwt.public_key(seed), name="u")
    assert busjwt.creds_parts(busjwt.creds(token, seed)) == (token, seed)
    with pytest.raises(ValueError, match="creds"):
        busjwt.creds_parts("nothing here")
