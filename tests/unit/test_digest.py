"""Canonical JSON (RFC 8785), digests, derived intent ids and Ed25519 signatures."""

from __future__ import annotations

import base64
import hashlib

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from writ_common.digest import (
    approval_digest,
    args_digest,
    canonical_json,
    policy_digest,
    sha256_digest,
    tool_digest,
)
from writ_common.ids import derive_intent_id, is_token, new_event_id
from writ_common.signing import (
    SignatureInvalid,
    b64,
    generate_key,
    key_id,
    public_key_b64,
    sign,
    unb64,
    verify,
)

pytestmark = pytest.mark.unit

KEY = b"k" * 32  # the plane secret that keys args_digest


# --- RFC 8785 canonical JSON ---------------------------------------------------------------------


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)  # beyond JCS's range too: both refuse it
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()  # any code point, control characters and lone surrogates included
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),  # non-ASCII keys: UTF-16 order
    max_leaves=25,
)


def jcs_reference(value: object) -> bytes | type[Exception]:
    try:
        return rfc8785.dumps(value)
    except Exception as exc:  # which error: only that both refuse
        return ValueError if isinstance(exc, ValueError) else type(exc)


@given(JSON_VALUES)
def test_canonical_json_is_byte_for_byte_the_rfc8785_reference(value: object) -> None:
    """The fast path (msgspec, sorted keys) is taken only where it writes exactly what rfc8785 does:
    any difference would change every digest, receipt hash and signature Writ has issued."""
    expected = jcs_reference(value)
    if isinstance(expected, bytes):
        assert canonical_json(value) == expected
    else:
        with pytest.raises(ValueError):
            canonical_json(value)


def test_canonical_json_sorts_keys_and_has_no_whitespace() -> None:
    value = {"b": [1, {"z": None, "a": True}], "a": "x", "c": {"y": False, "x": 1}}
    assert canonical_json(value) == b'{"a":"x","b":[1,{"a":true,"z":null}],"c":{"x":1,"y":false}}'


def test_canonical_json_sorts_keys_by_utf16_code_units() -> None:
    """RFC 8785 section 3.2.3's example: the emoji (a surrogate pair, 0xD83D) sorts before U+FB33."""
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys = ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    expected = "{" + ",".join(f'"{k}":"{value[k]}"' for k in keys).replace("\r", "\\r") + "}"
    assert canonical_json(value) == expected.encode()


def test_canonical_json_number_formatting() -> None:
    """RFC 8785 section 3.2.2.3: ECMAScript number serialization."""
    numbers = [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001, -0.0, 1.0, 1e21, 1e20]
    assert canonical_json(numbers) == b"[333333333.3333333,1e+30,4.5,0.002,1e-27,0,1,1e+21,100000000000000000000]"


def test_canonical_json_strings_are_utf8_with_minimal_escapes() -> None:
    assert canonical_json('é\u2028"\\\x1f/') == '"é\u2028\\"\\\\\\u001f/"'.encode()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 2**60])
def test_canonical_json_refuses_values_outside_ijson(bad: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"n": bad})


# --- digests -------------------------------------------------------------------------------------


def test_sha256_digest_is_sha256_of_canonical_json() -> None:
    value = {"b": 2, "a": 1}
    assert sha256_digest(value) == "sha256:" + hashlib.sha256(b'{"a":1,"b":2}').hexdigest()


def test_args_digest_is_stable_under_key_order() -> None:
    one = {"timezone": "UTC", "options": {"format": "iso", "precise": True}, "n": [1, 2]}
    two = {"n": [1, 2], "options": {"precise": True, "format": "iso"}, "timezone": "UTC"}
    assert args_digest(one, key=KEY) == args_digest(two, key=KEY)
    assert (
        args_digest(one, key=KEY).startswith("hmac-sha256:")
        and len(args_digest(one, key=KEY)) == len("hmac-sha256:") + 64
    )


@pytest.mark.parametrize(
    "other",
    [
        {"timezone": "UTC ", "n": [1, 2]},
        {"timezone": "UTC", "n": [2, 1]},  # list order matters
        {"timezone": "UTC", "n": [1, 2.5]},
        {"timezone": "UTC", "n": [1, "2"]},  # types matter
        {"timezone": "UTC", "n": [1, 2], "extra": None},
        {"timezone": "UTC"},
    ],
)
def test_args_digest_differs_for_different_values(other: dict[str, object]) -> None:
    assert args_digest({"timezone": "UTC", "n": [1, 2]}, key=KEY) != args_digest(other, key=KEY)


@given(st.dictionaries(st.text(), st.one_of(st.none(), st.booleans(), st.integers(-(2**53) + 1, 2**53 - 1), st.text())))
def test_args_digest_ignores_insertion_order(arguments: dict[str, object]) -> None:
    reordered = dict(reversed(list(arguments.items())))
    assert args_digest(arguments, key=KEY) == args_digest(reordered, key=KEY)


def test_tool_policy_and_approval_digests_bind_every_field() -> None:
    base = {
        "name": "get_time",
        "description": "Now",
        "input_schema": {"type": "object"},
        "output_schema": None,
        "annotations": {"readOnlyHint": True},
    }
    first = tool_digest(**base)  # type: ignore[arg-type]
    assert first == tool_digest(**dict(reversed(list(base.items()))))  # type: ignore[arg-type]
    for key, value in (("description", None), ("input_schema", {"type": "object", "x": 1}), ("annotations", None)):
        assert tool_digest(**{**base, key: value}) != first  # type: ignore[arg-type]
    # The rest of a listed tool (title, icons, _meta) is bound too; a tool without any keeps its digest.
    assert tool_digest(**base, extra={}) == tool_digest(**base, extra=None) == first  # type: ignore[arg-type]
    titled = tool_digest(**base, extra={"title": "Now"})  # type: ignore[arg-type]
    assert titled != first and titled != tool_digest(**base, extra={"title": "Later"})  # type: ignore[arg-type]

    assert policy_digest("permit(principal, action, resource);") != policy_digest(
        "forbid(principal, action, resource);"
    )

    approval = {
        "intent_id": "in-a",
        "agent_id": "agent-1",
        "on_behalf_of": None,
        "server": "pay",
        "tool": "transfer",
        "tool_digest": first,
        "args_digest": args_digest({}, key=KEY),
        "policy_digest": policy_digest(""),
        "approval_group": "finance",
        "quorum": 2,
        "owner_may_approve": False,
        "expires_at": "2026-01-01T00:00:00Z",
        "deadline": None,
    }
    signed = approval_digest(**approval)  # type: ignore[arg-type]
    # Everything policy decided on is bound: a changed group, quorum, expiry or tool is another digest.
    for key in approval:
        assert approval_digest(**{**approval, key: "changed"}) != signed, key  # type: ignore[arg-type]
    assert approval_digest(**{**approval, "quorum": 1}) != signed  # type: ignore[arg-type]
    assert approval_digest(**{**approval, "owner_may_approve": True}) != signed  # type: ignore[arg-type]


# --- ids -------------------------------------------------------------------------------------------


def test_derive_intent_id_is_deterministic_and_token_safe() -> None:
    first = derive_intent_id("agent-1", "order-42")
    assert first == derive_intent_id("agent-1", "order-42")
    assert first != derive_intent_id("agent-1", "order-43")
    assert first != derive_intent_id("agent-2", "order-42")
    assert is_token(first)
    assert first.startswith("in-")
    # the separator keeps (agent, key) pairs apart
    assert derive_intent_id("ab", "c") != derive_intent_id("a", "bc")


@given(st.text(min_size=1), st.text())
def test_derived_intent_ids_are_always_subject_tokens(agent_id: str, key: str) -> None:
    derived = derive_intent_id(agent_id, key)
    assert is_token(derived)
    assert "." not in derived and "*" not in derived and ">" not in derived


@pytest.mark.parametrize("value", ["agent-1", "a", "in-abc_def", "0" * 63])
def test_is_token_accepts(value: str) -> None:
    assert is_token(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Agent",
        "a.b",
        "a*",
        "a>",
        "a b",
        "-a",
        "_a",
        "0" * 64,
        "é",
        "a\nb",
        "a\n",
    ],
)
def test_is_token_rejects(value: str) -> None:
    assert not is_token(value)


def test_event_ids_are_ulids_in_order() -> None:
    ids = [new_event_id() for _ in range(5)]
    assert all(len(i) == 26 for i in ids)
    assert len(set(ids)) == 5


# --- signing -----------------------------------------------------------------------------------------


def test_sign_verify_roundtrip() -> None:
    key = generate_key()
    public = public_key_b64(key)
    message = b'{"agent_id":"agent-1","tool":"time/get_current_time"}'
    signature = sign(key, message)
    verify(public, message, signature)
    assert len(unb64(signature)) == 64
    assert len(unb64(public)) == 32
    assert key_id(public).startswith("ed25519:") and len(key_id(public)) == len("ed25519:") + 16


@pytest.mark.parametrize("position", [0, 10, -1])
def test_one_altered_byte_of_the_message_fails(position: int) -> None:
    key = generate_key()
    message = bytearray(b'{"agent_id":"agent-1","tool":"time/get_current_time"}')
    signature = sign(key, bytes(message))
    message[position] ^= 0x01
    with pytest.raises(SignatureInvalid):
        verify(public_key_b64(key), bytes(message), signature)


def test_altered_signature_and_wrong_key_fail() -> None:
    key, other = generate_key(), generate_key()
    message = b"hello"
    signature = bytearray(unb64(sign(key, message)))
    with pytest.raises(SignatureInvalid):
        verify(public_key_b64(other), message, b64(bytes(signature)))
    signature[0] ^= 0x80
    with pytest.raises(SignatureInvalid):
        verify(public_key_b64(key), message, b64(bytes(signature)))


@pytest.mark.parametrize(
    "public_key",
    [
        "not base64!",
        "",
        base64.b64encode(b"\x01" * 31).decode(),  # wrong length
        base64.b64encode(b"\x01" * 33).decode(),
    ],
)
def test_malformed_key_is_signature_invalid(public_key: str) -> None:
    key = generate_key()
    with pytest.raises(SignatureInvalid):
        verify(public_key, b"hello", sign(key, b"hello"))


@pytest.mark.parametrize("signature", ["", "not base64!", base64.b64encode(b"\x00" * 63).decode()])
def test_malformed_signature_is_signature_invalid(signature: str) -> None:
    key = generate_key()
    with pytest.raises(SignatureInvalid):
        verify(public_key_b64(key), b"hello", signature)


def test_tool_output_is_brought_inside_the_canonical_domain() -> None:
    from writ_common.digest import canonical_json, within_canonical_domain

    wild = {"big": 2**60, "neg": -(2**60), "inf": float("inf"), "ok": [1, 2.5, "x", None, True], 3: "key"}
    tamed = within_canonical_domain(wild)
    assert tamed == {"big": str(2**60), "neg": str(-(2**60)), "inf": "inf", "ok": [1, 2.5, "x", None, True], "3": "key"}
    canonical_json(tamed)  # no longer raises
    with pytest.raises(ValueError):
        canonical_json({"big": 2**60})
