"""Sharing a route's places between the agents that want them: an agent under its share takes a
free place, one at or over it only while nobody asking is under theirs; a freed place goes to the
waiting agent holding the fewest; being refused counts as asking for a while, being served ends it."""

from __future__ import annotations

import pytest

from writ_executor.fair_share import FairShare

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
    share.wanted("alice", now=9.0, for_s=3.0)
    share.wanted("alice", now=10.0, for_s=3.0)  # she came back while her claim was open
    assert not share.may_take("mallory", 2, 1, now=11.0, waiting=[]), "alice was refused 1 s ago"
    assert share.may_take("alice", 2, 1, now=11.0, waiting=[])
    assert share.may_take("mallory", 2, 1, now=13.5, waiting=[]), "alice did not come back: the claim lapsed"


def test_a_served_agent_no_longer_blocks_others_beyond_its_share() -> None:
    share = holding(mallory=3)
    share.wanted("alice", now=0.0, for_s=5.0)
    share.wanted("alice", now=0.1, for_s=5.0)
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
    share.wanted("alice", now=0.0, for_s=5.0)
    share.wanted("alice", now=0.1, for_s=5.0)
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
    share.wanted("alice", now, for_s=2.0)  # alice asked while mallory held it
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
                share.wanted(agent, now, for_s=2.0)
        assert taken, f"nobody took the free place at {now}"
    assert turns[1:] == ["mallory", "alice"] * 3


def test_no_place_is_kept_for_an_agent_that_does_not_come_back() -> None:
    # Refused callers that never ask again (an open loop, an agent that gave up) would leave the
    # place idle for their whole claim, refusal after refusal.
    share = FairShare()
    share.took("bob", now=0.0)
    for i, agent in enumerate(["c1", "c2", "c3"]):
        share.wanted(agent, now=0.1 * i, for_s=2.0)
    share.gave_back("bob")
    assert share.may_take("bob", 1, 0, now=0.5, waiting=[]), "none of them has shown it comes back"
    share.took("bob", now=0.5)
    share.wanted("c1", now=0.6, for_s=2.0)  # c1 asks again while its claim is open
    share.gave_back("bob")
    assert not share.may_take("bob", 1, 0, now=0.7, waiting=[]), "c1 comes back: the place is kept for it"
    assert share.may_take("bob", 1, 0, now=2.7, waiting=[]), "its claim lapsed unused"
    share.wanted("c1", now=3.0, for_s=2.0)
    assert share.may_take("bob", 1, 0, now=3.1, waiting=[]), "a lapsed claim: c1 has to show it again"
