"""Who holds which resource subscription, folded from the executor's control events, and when the
one upstream subscription per (server, uri) is sent or dropped: plain values, no broker."""

from __future__ import annotations

import pytest

from writ_common import events as ev
from writ_executor import subscription_rules as rules
from writ_executor.subscription_rules import Subscriptions

pytestmark = pytest.mark.unit

URI = "file:///notes.md"


def sub(agent: str, intent: str, uri: str = URI, server: str = "fs") -> ev.ResourceSubscribed:
    return ev.ResourceSubscribed(server=server, uri=uri, agent_id=agent, intent_id=intent)


def unsub(agent: str, intent: str, uri: str = URI, server: str = "fs") -> ev.ResourceUnsubscribed:
    return ev.ResourceUnsubscribed(server=server, uri=uri, agent_id=agent, intent_id=intent)


def test_a_subscription_is_held_until_its_last_agent_leaves() -> None:
    view = Subscriptions()
    for event in (sub("a", "i1"), sub("b", "i2"), sub("a", "i3"), unsub("a", "i4")):
        view.apply(event)
    assert view.of("fs", URI) == {"b"} and view.live("fs") == [URI] and view.servers() == {"fs"}
    view.apply(unsub("b", "i5"))
    assert view.of("fs", URI) == frozenset() and view.live("fs") == [] and view.servers() == set()


def test_the_same_intents_event_again_changes_nothing_even_after_a_later_unsubscribe() -> None:
    view = Subscriptions()
    assert view.apply(sub("a", "i1")) == ("fs", URI)
    assert view.apply(unsub("a", "i2")) == ("fs", URI)
    assert view.apply(sub("a", "i1")) is None  # appended again after the duplicate window: a repeat
    assert view.of("fs", URI) == frozenset()
    assert view.apply(ev.SecretSet(name="token")) is None  # not a subscription event


def test_rebuilding_from_the_same_events_gives_the_same_view() -> None:
    events = [sub("a", "i1"), sub("b", "i2", uri="u2"), unsub("a", "i3"), sub("c", "i4", server="db")]
    first, second = Subscriptions(), Subscriptions()
    for event in events:
        first.apply(event)
    for event in [*events, *events]:
        second.apply(event)
    assert first.holders == second.holders == {("fs", "u2"): {"b"}, ("db", URI): {"c"}}


def test_one_upstream_subscription_serves_every_agent() -> None:
    assert rules.subscribe_upstream(session_holds=False)
    assert not rules.subscribe_upstream(session_holds=True)  # another agent's, or this agent's again
    assert rules.unsubscribe_upstream({"a"}, "a", session_holds=True)  # the last holder leaves
    assert not rules.unsubscribe_upstream({"a", "b"}, "a", session_holds=True)  # b still holds it
    assert not rules.unsubscribe_upstream(set(), "a", session_holds=False)  # a fresh session holds nothing


@pytest.mark.parametrize(
    ("wanted", "holds", "action"),
    [(True, False, "subscribe"), (False, True, "unsubscribe"), (True, True, None), (False, False, None)],
)
def test_a_session_follows_the_view(wanted: bool, holds: bool, action: str | None) -> None:
    assert rules.reconcile(wanted=wanted, session_holds=holds) == action


def test_an_update_goes_to_exactly_the_holders_of_that_uri_on_that_server() -> None:
    view = Subscriptions()
    for event in (sub("a", "i1"), sub("b", "i2"), sub("c", "i3", uri="other"), sub("d", "i4", server="db")):
        view.apply(event)
    assert list(rules.recipients(view, "fs", URI)) == ["a", "b"]
    assert list(rules.recipients(view, "fs", "file:///nobody")) == []
    assert list(rules.recipients(view, "evil", URI)) == []  # the same URI on another server is another resource


def test_only_a_succeeded_subscription_operation_is_recorded() -> None:
    assert rules.subscription_event("subscribe_resource", "fs", URI, "a", "i1") == sub("a", "i1")
    assert rules.subscription_event("unsubscribe_resource", "fs", URI, "a", "i2") == unsub("a", "i2")
    assert rules.subscription_event("read_resource", "fs", URI, "a", "i3") is None


def test_a_listing_changed_only_against_an_earlier_answer() -> None:
    before, after = rules.listing_digest([{"uri": "a"}]), rules.listing_digest([{"uri": "a"}, {"uri": "b"}])
    assert not rules.listing_changed(None, before)  # the first answer: nothing known to compare
    assert not rules.listing_changed(before, rules.listing_digest([{"uri": "a"}]))
    assert rules.listing_changed(before, after)
