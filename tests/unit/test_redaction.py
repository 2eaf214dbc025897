"""The executor's secret rules as pure functions: resolving references, scrubbing values."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

from writ_common import events as ev
from writ_common.errors import Refusal
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
    assert isinstance(missing, Refusal)
    assert missing.code == "secret_missing"
    assert "'db-pass'" in missing.reason and "writ secret set db-pass" in missing.reason
    assert TOKEN not in str(missing)


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


PEM = (
    "-----BEGIN KEY-----\nComment: clé-9f2a\nMIIBVgIBADANBgkqhkiG9w0BAQEFAASCAUAwggE8/+AgEAAkEA\nab=\n-----END KEY-----"
)


def test_a_multi_line_value_is_scrubbed_json_escaped_and_line_by_line() -> None:
    redactor = Redactor({"pem": PEM})
    for form in (PEM, json.dumps(PEM)[1:-1], json.dumps(PEM, ensure_ascii=False)[1:-1]):
        assert redactor.text(f"<{form}>") == "<[redacted:pem]>", form
    upper = json.dumps(PEM)[1:-1].replace("\\u00e9", "\\u00E9")
    assert redactor.text(upper) == "[redacted:pem]"
    assert redactor.text(json.dumps(PEM)[1:-1].replace("/", "\\/")) == "[redacted:pem]"
    lines = PEM.splitlines()
    reversed_lines = "\n".join(f"line {n}: {line}" for n, line in reversed(list(enumerate(lines))))
    scrubbed = redactor.text(reversed_lines)
    assert all(line not in scrubbed for line in lines if len(line) >= 4), scrubbed
    assert "line 3: ab=" in scrubbed  # a line as short as ordinary text is not a secret on its own
    assert redactor.value({"lines": lines})["lines"][2] == "[redacted:pem]"
    assert redactor.text(json.dumps(lines[1])) == '"[redacted:pem]"'  # a line, escaped


def test_split_holds_back_what_could_be_the_start_of_a_multi_line_value() -> None:
    redactor = Redactor({"pem": PEM, "short": "xy\nzw"})
    lines = PEM.splitlines(keepends=True)
    ready, held = redactor.split("before\n" + lines[0])
    assert (ready, held) == ("before\n", lines[0])
    ready, held = redactor.split(held + lines[1])
    assert (ready, held) == ("", "".join(lines[:2]))
    ready, held = redactor.split("".join(lines) + "\n")
    assert (ready, held) == ("[redacted:pem]\n", "")
    assert redactor.split("plain\n") == ("plain\n", "")
    assert redactor.split("xy\n") == ("", "xy\n")  # "xy" alone is too short to scrub; it may go on
    assert redactor.split("xy\nzw!\n") == ("[redacted:short]!\n", "")
    # Held from the line's start: a log line is written whole, never "a" now and its rest later.
    assert redactor.split("a-----BEGIN KEY-----\n") == ("", "a-----BEGIN KEY-----\n")
    assert redactor.split("done\nline 0: -----BEGIN KEY-----\n") == ("done\n", "line 0: -----BEGIN KEY-----\n")
