"""The gateway reads the executor's notices defensively and relays an update to exactly the client
connections holding its URI: plain values, no broker."""

from __future__ import annotations

import json

import pytest

from writ.gateway.notices import Updated, held_elsewhere, holders_of, list_change_of, updated_of

pytestmark = pytest.mark.unit


def test_a_resources_updated_notice_is_read_or_ignored_never_raised() -> None:
    assert updated_of(json.dumps({"server": "fs", "uri": "file:///a"}).encode()) == Updated("fs", "file:///a")
    deep = b"[" * 5000 + b"]" * 5000
    for junk in (b"", b"{not json", b"[]", b'{"server": 1, "uri": "u"}', b'{"server": "s"}', deep, b"\xff\xfe"):
        assert updated_of(junk) is None, junk
    assert updated_of(json.dumps({"server": "fs", "uri": "x" * 20000}).encode()) is None  # past any URI's size


def test_a_list_change_names_resources_or_prompts_on_its_subject() -> None:
    assert list_change_of("writ.list_changed.fs.resources") == "resources"
    assert list_change_of("writ.list_changed.fs.prompts") == "prompts"
    for other in ("writ.list_changed.fs.tools", "writ.list_changed.resources", "writ.notice.a.b.resources"):
        assert list_change_of(other) is None, other


def test_an_update_goes_to_the_connections_holding_that_uri_on_that_server() -> None:
    one, two, three = object(), object(), object()
    holdings = {one: {"file:///a": "fs"}, two: {"file:///b": "fs"}, three: {"file:///a": "other"}}
    assert holders_of(holdings, Updated("fs", "file:///a")) == [one]
    assert holders_of(holdings, Updated("fs", "file:///c")) == []


def test_an_unsubscribe_is_an_intent_only_for_the_last_holder_of_this_gateway() -> None:
    assert held_elsewhere([{"file:///a": "fs"}, {}], "file:///a")
    assert not held_elsewhere([{"file:///b": "fs"}], "file:///a")
    assert not held_elsewhere([], "file:///a")
