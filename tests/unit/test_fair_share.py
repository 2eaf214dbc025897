"""Sharing a route's places between the agents that want them: an agent under its share takes a
free place, one at or over it only while nobody asking is under theirs; a freed place goes to the
waiting agent holding the fewest; being refused counts as asking for a while, being served ends it."""

from __future__ import annotations

import pytest

from writ_executor.fair_share import FairShare
from writ_executor.slots import ServerSlots

pytestmark = [pytest.mark.unit]


def holding(**places: int) -> FairShare:
    share = FairShare()
    for agent, n in places.items():
        for _ in range(n):
            share.took(agent, now=0.0)
    return share


def test_an_agent_alone_on_a_route_may_take_every_place() -> None:
    share = holding(mallory=7)
    assert share.may_take("mallory", 8, 7, now=0.0, waiting=[])


def test_an_agent_over_its_share_may_not_take_a_place_another_agent_waits_for() -> None:
    share = holding(mallory=7)
    assert share.share(8, 0.0, ["alice"]) == 4
    assert not share.may_take("mallory", 8, 7, now=0.0, waiting=["alice"]), "the one free place is alice's"
    assert share.may_take("alice", 8, 7, now=0.0, waiting=["alice"])


def test_places_nobody_else_asks_for_go_to_whoever_asks() -> None:
    # alice holds one and asks for nothing more: mallory's extra places waste nothing of hers.
    share = holding(mallory=5, alice=1)
    assert share.share(8, 0.0, []) == 4
    assert share.may_take("mallory", 8, 6, now=0.0, waiting=[])


def test_an_agent_refused_lately_keeps_its_claim_until_it_comes_back_or_it_lapses() -> None:
    share = holding(mallory=1)
    share.wanted("alice", now=9.0, retry_after_s=1.0)  # her claim: until 11.0
    share.wanted("alice", now=10.0, retry_after_s=1.0)  # she came back as told: until 12.0
    assert not share.may_take("mallory", 2, 1, now=11.0, waiting=[]), "alice was refused 1 s ago"
    assert share.may_take("alice", 2, 1, now=11.0, waiting=[])
    assert share.may_take("mallory", 2, 1, now=13.5, waiting=[]), "alice did not come back: the claim lapsed"


def test_a_served_agent_no_longer_blocks_others_beyond_its_share() -> None:
    share = holding(mallory=3)
    share.wanted("alice", now=0.0, retry_after_s=0.1)
    share.wanted("alice", now=0.1, retry_after_s=0.1)
    assert share.may_take("mallory", 5, 3, now=0.2, waiting=[]), "two places free: one for alice, one left"
    assert not share.may_take("mallory", 4, 3, now=0.2, waiting=[]), "one place free: alice's"
    share.took("alice", now=0.5)
    share.gave_back("mallory")
    assert share.may_take("mallory", 4, 3, now=1.0, waiting=[]), "alice got a place: her claim ended with it"


def test_a_freed_place_goes_to_the_waiting_agent_that_holds_the_fewest() -> None:
    share = holding(mallory=3, bob=1)
    waiting = ["mallory", "mallory", "bob", "alice", "alice"]
    assert share.next_of(waiting, 5, 4, now=0.0) == 3, "alice holds none: her oldest waiting call"
    share.took("alice", now=0.5)
    assert share.next_of(["mallory", "mallory", "bob", "alice"], 5, 4, now=0.0) == 2, (
        "bob and alice hold one each: bob was served longer ago"
    )


def test_no_waiting_call_is_handed_a_place_its_agent_may_not_take() -> None:
    share = holding(mallory=3)
    share.wanted("alice", now=0.0, retry_after_s=0.1)
    share.wanted("alice", now=0.1, retry_after_s=0.1)  # her claim: until 1.1
    assert share.next_of(["mallory"], 4, 3, now=1.0) is None, "alice, refused 1 s ago, is due the place"
    assert share.next_of(["mallory"], 4, 3, now=6.0) == 0


def test_every_place_given_back_leaves_no_trace() -> None:
    share = holding(mallory=2)
    share.gave_back("mallory")
    share.gave_back("mallory")
    assert not share.held


def test_agents_that_outnumber_the_places_take_turns() -> None:
    # One place; mallory keeps asking from many callers, alice from one: each freed place goes to
    # whichever of the two was served longer ago, though mallory's call always arrives first.
    share, now = FairShare(), 0.0
    share.took("mallory", now)
    share.wanted("alice", now, retry_after_s=1.0)  # alice asked while mallory held it
    turns = ["mallory"]  # then mallory again: alice has not yet shown that she comes back
    for _ in range(6):
        now += 1.0
        share.gave_back(turns[-1])
        taken = False
        for agent in ("mallory", "alice"):
            if not taken and share.may_take(agent, 1, 0, now, []):
                share.took(agent, now)
                turns.append(agent)
                taken = True
            else:
                share.wanted(agent, now, retry_after_s=1.0)
        assert taken, f"nobody took the free place at {now}"
    assert turns[1:] == ["mallory", "alice"] * 3


def test_no_place_is_kept_for_an_agent_that_does_not_come_back() -> None:
    # Refused callers that never ask again (an open loop, an agent that gave up) would leave the
    # place idle for their whole claim, refusal after refusal.
    share = FairShare()
    share.took("bob", now=0.0)
    for i, agent in enumerate(["c1", "c2", "c3"]):
        share.wanted(agent, now=0.1 * i, retry_after_s=1.0)  # each told: come back after 1 s
    share.gave_back("bob")
    assert share.may_take("bob", 1, 0, now=0.5, waiting=[]), "none of them has shown it comes back"
    share.took("bob", now=0.5)
    share.wanted("c1", now=0.9, retry_after_s=1.0)  # c1 comes back as told: its claim until 2.9
    share.gave_back("bob")
    assert not share.may_take("bob", 1, 0, now=1.0, waiting=[]), "c1 comes back: the place is kept for it"
    assert share.may_take("bob", 1, 0, now=3.0, waiting=[]), "its claim lapsed unused"
    share.wanted("c1", now=3.1, retry_after_s=1.0)
    assert share.may_take("bob", 1, 0, now=3.2, waiting=[]), "a lapsed claim: c1 has to show it again"


def test_no_place_is_kept_for_an_agent_that_comes_at_its_own_pace_whatever_it_is_told() -> None:
    # An open-loop caller: told to come back after 3 s, it comes every 2 s. Its claims would
    # keep a place idle most of the time, and it does not wait for them anyway.
    share = FairShare()
    share.took("bob", now=0.0)
    for now in (0.0, 2.0, 4.0, 6.0):
        share.wanted("open", now=now, retry_after_s=3.0)
    share.gave_back("bob")
    assert share.may_take("bob", 1, 0, now=6.5, waiting=[])


def test_a_servers_slots_are_shared_between_agents_whichever_tool_they_call() -> None:
    slots = ServerSlots(2)
    assert slots.take("db", agent="mallory", now=0.0) and slots.take("db", agent="mallory", now=0.0)
    assert not slots.take("db", agent="alice", now=0.1), "both slots are mallory's"
    assert not slots.take("db", agent="alice", now=0.3), "she comes back (a redelivery): her claim stands"
    slots.give_back("db", "mallory")
    assert not slots.take("db", agent="mallory", now=0.4), "the freed slot is alice's"
    assert slots.take("db", agent="alice", now=0.5)
    slots.give_back("db", "alice")
    slots.give_back("db", "mallory")
    assert slots.take("db", agent="mallory", now=0.6), "nobody else asks: mallory may have both again"
