"""The executor's secret rules as pure functions: resolving references, scrubbing values."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest

from writ_common import events as ev
from writ_executor.redaction import Redactor, encodings, marker, references, resolve
from writ_registry.domain import secret_reference_problem

pytestmark = pytest.mark.unit

TOKEN = "tok-3f9a2c71d0e84b56"
SECRETS = {"api-token": TOKEN, "db-pass": "hunter22"}


def test_every_string_at_any_depth_is_scrubbed_keys_too() -> None:
    output = {
        "content": [{"type": "text", "text": f"token={TOKEN}; again {TOKEN}"}],
        "structuredContent": {"nested": [{"deep": f"Bearer {TOKEN}"}], TOKEN: "as a key"},
        "isError": False,
        "count": 3,
    }
    scrubbed = Redactor(SECRETS).value(output)
    assert scrubbed == {
        "content": [{"type": "text", "text": "token=[redacted:api-token]; again [redacted:api-token]"}],
        "structuredContent": {"nested": [{"deep": "Bearer [redacted:api-token]"}], "[redacted:api-token]": "as a key"},
        "isError": False,
        "count": 3,
    }
    assert TOKEN not in repr(scrubbed)


def test_common_encodings_of_a_value_are_scrubbed() -> None:
    raw = TOKEN.encode()
    text = " ".join(
        [base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(), raw.hex(), raw.hex().upper()]
    )
    scrubbed = Redactor(SECRETS).text(text + " " + quote("p@ss word/1", safe=""))
    assert scrubbed.split() == ["[redacted:api-token]"] * 4 + [quote("p@ss word/1", safe="")]
    assert Redactor({"x": "p@ss word/1"}).text(quote("p@ss word/1", safe="")) == "[redacted:x]"


def test_the_longer_secret_wins_when_one_contains_another() -> None:
    redactor = Redactor({"short": "abcd", "long": "xxabcdyy"})
    assert redactor.text("xxabcdyy and abcd") == "[redacted:long] and [redacted:short]"


def test_no_secrets_leaves_everything_as_it_was() -> None:
    redactor = Redactor({})
    assert not redactor
    value = {"a": ["b", 1]}
    assert redactor.value(value) is value
    assert redactor.text("plain") == "plain"


def test_regex_characters_in_a_value_are_literal() -> None:
    assert Redactor({"re": "a.b*c+(d)"}).text("a.b*c+(d) axbbbcd") == "[redacted:re] axbbbcd"


def test_encodings_skip_forms_too_short_to_mean_anything() -> None:
    assert all(len(form) >= 4 for form in encodings("abcd"))
    assert encodings("abcd")[0] == "abcd"
    assert marker("n") == "[redacted:n]"


STDIO = ev.ServerRegistered(
    name="canary",
    transport="stdio",
    command="python",
    env={"PLAIN": "1"},
    secret_env={"API_TOKEN": "api-token"},
)
HTTP = ev.ServerRegistered(
    name="web",
    transport="http",
    url="http://127.0.0.1:1/mcp",
    headers={"X-Plain": "1"},
    secret_headers={"Authorization": "api-token", "X-Db": "db-pass"},
)


def test_resolve_fills_references_into_env_and_headers() -> None:
    stdio = resolve(STDIO, SECRETS)
    assert isinstance(stdio, ev.ServerRegistered)
    assert stdio.env == {"PLAIN": "1", "API_TOKEN": TOKEN}
    http = resolve(HTTP, SECRETS)
    assert isinstance(http, ev.ServerRegistered)
    assert http.headers == {"X-Plain": "1", "Authorization": TOKEN, "X-Db": "hunter22"}
    assert references(HTTP) == ["api-token", "db-pass"]


def test_resolve_names_every_missing_secret_and_no_value() -> None:
    missing = resolve(HTTP, {"api-token": TOKEN})
    assert isinstance(missing, str)
    assert missing.startswith("secret_missing: ")
    assert "'db-pass'" in missing and "writ secret set db-pass" in missing
    assert TOKEN not in missing


def test_a_server_without_references_is_returned_unchanged() -> None:
    plain = ev.ServerRegistered(name="time", transport="stdio", command="mcp-server-time")
    assert resolve(plain, {}) is plain


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        (STDIO, None),
        (HTTP, None),
        (ev.ServerRegistered(name="s", transport="stdio", command="x", secret_env={"T": "Bad.Name"}), "secret name"),
        (ev.ServerRegistered(name="s", transport="http", url="u", secret_env={"T": "ok"}), "for a stdio server"),
        (ev.ServerRegistered(name="s", transport="stdio", command="x", secret_headers={"T": "ok"}), "for an HTTP"),
        (
            ev.ServerRegistered(name="s", transport="stdio", command="x", env={"T": "1"}, secret_env={"T": "ok"}),
            "both a value and a secret reference",
        ),
    ],
)
def test_registry_accepts_only_well_formed_references(server: ev.ServerRegistered, problem: str | None) -> None:
    found = secret_reference_problem(server)
    assert (found is None) if problem is None else (found is not None and problem in found)
