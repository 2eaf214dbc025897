"""The registry's catalog: a removed server is forgotten whole; an unknown tool suggests the near ones."""

from __future__ import annotations

import msgspec
import pytest

from writ_common import events as ev
from writ_common.catalog import Catalog
from writ_common.envelope import Producer, StoredEvent, decode, encode, make_envelope
from writ_common.errors import Refusal

pytestmark = pytest.mark.unit

PRODUCER = Producer(service="registry", instance="t", version="0")


def stored(payload: ev.Payload, seq: int) -> StoredEvent:
    return decode(encode(make_envelope(payload, producer=PRODUCER)), seq=seq)


def tool(name: str, digest: str = "sha256:a") -> ev.ToolDefinition:
    return ev.ToolDefinition(
        name=name, input_schema={"type": "object"}, annotations=ev.ToolAnnotations(), tool_digest=digest
    )


def time_catalog() -> Catalog:
    catalog = Catalog()
    catalog.apply(stored(ev.ServerRegistered(name="time", transport="stdio", command="/bin/t"), 1))
    catalog.apply(stored(ev.ToolsDiscovered(server="time", tools=[tool("get_current_time"), tool("convert_time")]), 2))
    catalog.apply(stored(ev.ToolOverrideSet(server="time", tool="convert_time", idempotent=True), 3))
    return catalog


def test_a_removed_server_is_forgotten_with_its_tools_and_overrides() -> None:
    catalog = time_catalog()
    catalog.apply(stored(ev.ServerRemoved(name="time", removed_by="alice"), 4))
    assert "time" not in catalog.servers and "time" not in catalog.tools and not catalog.overrides
    assert catalog.resolve("get_current_time") == Refusal(
        code="unknown_tool", reason="no tool 'get_current_time' on any registered server"
    )
    # The fence for registering the name again is its last registration, not an empty subject.
    assert (catalog.registered_seq["time"], catalog.removals["time"]) == (1, 1)


def test_a_server_registered_again_after_removal_starts_afresh() -> None:
    catalog = time_catalog()
    catalog.apply(stored(ev.ServerRemoved(name="time"), 4))
    catalog.apply(stored(ev.ServerRegistered(name="time", transport="stdio", command="/other/t"), 5))
    catalog.apply(stored(ev.ToolsDiscovered(server="time", tools=[tool("get_current_time", "sha256:b")]), 6))
    resolved = catalog.resolve("time/get_current_time")
    assert not isinstance(resolved, Refusal) and resolved[1].tool_digest == "sha256:b"
    assert catalog.registered_seq["time"] == 5


@pytest.mark.parametrize(
    ("asked", "suggested"),
    [
        ("get_curent_time", "'get_current_time', 'time/get_current_time'"),
        ("tme/convert_time", "'time/convert_time'"),
        ("clock/convert_time", "'time/convert_time'"),
    ],
)
def test_an_unknown_tool_suggests_the_nearest_names(asked: str, suggested: str) -> None:
    refusal = time_catalog().resolve(asked)
    assert isinstance(refusal, Refusal) and refusal.code == "unknown_tool"
    assert refusal.reason.endswith(f"; did you mean {suggested}?")


def test_nothing_near_suggests_nothing() -> None:
    assert time_catalog().resolve("send_email") == Refusal(
        code="unknown_tool", reason="no tool 'send_email' on any registered server"
    )


def test_the_same_version_rediscovered_keeps_its_acceptance_and_the_fuller_definition() -> None:
    catalog = time_catalog()
    fuller = msgspec.structs.replace(tool("get_current_time"), listed={"name": "get_current_time", "title": "Now"})
    changed = tool("convert_time", "sha256:changed")
    catalog.apply(stored(ev.ToolsDiscovered(server="time", tools=[fuller, changed], initial=False), 4))
    assert catalog.tools["time"]["get_current_time"].listed == {"name": "get_current_time", "title": "Now"}
    assert catalog.tools["time"]["convert_time"].tool_digest == "sha256:a"  # the accepted version stays
    assert set(catalog.quarantined["time"]) == {"convert_time"}


@pytest.mark.parametrize("spelled", ["time__get_current_time", "time.get_current_time"])
def test_the_gateways_spellings_resolve_as_server_slash_tool(spelled: str) -> None:
    resolved = time_catalog().resolve(spelled)
    assert not isinstance(resolved, Refusal) and resolved[0] == "time" and resolved[1].name == "get_current_time"


def test_a_gateway_spelling_finds_the_one_split_that_names_a_server_and_its_tool() -> None:
    catalog = Catalog()
    catalog.apply(stored(ev.ServerRegistered(name="my__srv", transport="stdio", command="/bin/t"), 1))
    catalog.apply(stored(ev.ToolsDiscovered(server="my__srv", tools=[tool("do__it")]), 2))
    resolved = catalog.resolve("my__srv__do__it")
    assert not isinstance(resolved, Refusal) and (resolved[0], resolved[1].name) == ("my__srv", "do__it")
    # Two splits that each name a server offering that tool: ambiguous, so no guess.
    catalog.apply(stored(ev.ServerRegistered(name="my", transport="stdio", command="/bin/t"), 3))
    catalog.apply(stored(ev.ToolsDiscovered(server="my", tools=[tool("srv__do__it")]), 4))
    assert str(catalog.resolve("my__srv__do__it")).startswith("unknown_tool: ")


def test_the_gateways_server_dot_tool_spelling_never_shadows_a_tool_of_that_name() -> None:
    catalog = time_catalog()
    # A tool really named with a dot keeps its own name; an unknown server.tool stays unknown.
    catalog.apply(stored(ev.ToolsDiscovered(server="time", tools=[tool("time.get_current_time")]), 4))
    named = catalog.resolve("time.get_current_time")
    assert not isinstance(named, Refusal) and named[1].name == "time.get_current_time"
    assert str(catalog.resolve("clock.get_current_time")).startswith("unknown_tool: ")
