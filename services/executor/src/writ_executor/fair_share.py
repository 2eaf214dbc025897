"""Who gets a route's places when agents want more of them than it has. Pure.

A route (``server/tool``) has a limit of calls in flight (``limiter``); without this, its places go
to whichever call asks first, so one agent that keeps many calls coming holds all of them and
another agent's call to that route is answered ``overloaded`` or waits behind it, however few calls
it makes. Here each agent that wants the route (it holds a place, has a call waiting for one, or was
refused one lately) has a share: the limit divided among them, rounded down (none, when more agents
want the route than it has places). An agent under its share takes a free place; an agent at or
over it takes one only if a place is left once every agent asking that comes before it (fewer
places held, or as many and served longer ago) has one. So a route one agent alone uses is all that
agent's, agents that each want more than their share take turns, and no more places wait for an
agent to come back than there are agents it is waited for. A freed place goes to the waiting call
that comes first by the same order, the oldest among an agent's calls.

"Refused lately" is what makes this hold on a slow route, where a call that finds the route full
does not wait in place but is answered at once: the refused agent comes back after its
retry-after, and until then the flooder's next calls may not take the place it is due. A place is
kept only for an agent that has shown it comes back as told: one that asked again after most of
its last retry-after and before its claim lapsed (twice the retry-after, at least a second). A
refused agent that does not come back (an agent that gave up), or that comes at its own pace
whatever it is told (an open-loop caller), would otherwise leave the place idle for its whole
claim, refusal after refusal.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

SERVED_KEPT = 4096  # agents whose last place on a route is remembered (for the turn order)
MIN_CLAIM_S = 1.0  # the shortest a refused agent counts as wanting a place
RETRY_AFTER_KEPT = 0.8  # asking again after this much of its retry-after is coming back as told


class FairShare:
    """The places one route's agents hold, and who wants more."""

    def __init__(self) -> None:
        self.held: Counter[str] = Counter()
        self._wanting: dict[str, float] = {}  # agent -> until when (monotonic) it counts as wanting a place
        self._due_back: dict[str, float] = {}  # agent -> from when (monotonic) its asking again is coming back
        self._served: dict[str, float] = {}  # agent -> when (monotonic) it last took a place
        self._returns: set[str] = set()  # agents that asked again while their claim was open

    def took(self, agent: str, now: float) -> None:
        self.held[agent] += 1
        self._came_back(agent, now)
        self._wanting.pop(agent, None)  # served: if it wants more, its next call says so
        self._due_back.pop(agent, None)
        self._served[agent] = now
        if len(self._served) > SERVED_KEPT:  # long-gone agents: their turn order no longer matters
            for gone in sorted(self._served, key=self._served.__getitem__)[: SERVED_KEPT // 2]:
                del self._served[gone]

    def gave_back(self, agent: str) -> None:
        self.held[agent] -= 1
        if self.held[agent] <= 0:
            del self.held[agent]

    def wanted(self, agent: str, now: float, retry_after_s: float) -> None:
        """``agent``'s call found no place (``now``: monotonic seconds) and was told to come back
        after ``retry_after_s``: it counts as wanting one until twice that (at least a second)."""
        self._came_back(agent, now)
        self._wanting[agent] = max(self._wanting.get(agent, 0.0), now + max(MIN_CLAIM_S, 2 * retry_after_s))
        self._due_back[agent] = now + RETRY_AFTER_KEPT * retry_after_s

    def hungry(self, now: float, waiting: Sequence[str]) -> set[str]:
        """The agents asking for a place now: a call waiting in place, or refused lately (those
        shown to come back)."""
        for agent in [a for a, until in self._wanting.items() if until <= now]:
            del self._wanting[agent]
            self._due_back.pop(agent, None)
            self._returns.discard(agent)  # its claim lapsed: it did not come back this time
        return {*(a for a in self._wanting if a in self._returns), *waiting}

    def _came_back(self, agent: str, now: float) -> None:
        if self._due_back.get(agent, math.inf) <= now < self._wanting.get(agent, -math.inf):
            self._returns.add(agent)

    def share(self, limit: int, now: float, waiting: Sequence[str], asking: str | None = None) -> int:
        """Each wanting agent's share of ``limit`` places (none when they outnumber the places)."""
        return self._share_among(limit, self.hungry(now, waiting), asking)

    def _share_among(self, limit: int, hungry: set[str], asking: str | None) -> int:
        contenders = {*self.held, *hungry}
        if asking is not None:
            contenders.add(asking)
        return limit // max(1, len(contenders))

    def rank(self, agent: str) -> tuple[int, float]:
        """Who comes first for a place: fewer held, then served longer ago."""
        return self.held[agent], self._served.get(agent, -math.inf)

    def may_take(self, agent: str, limit: int, in_flight: int, now: float, waiting: Sequence[str]) -> bool:
        """Whether ``agent`` may take one of the ``limit - in_flight`` free places: under its share,
        or one is left after one for each agent asking that comes before it."""
        free = limit - in_flight
        if free <= 0:
            return False
        hungry = self.hungry(now, waiting)
        if self.held[agent] < self._share_among(limit, hungry, agent):
            return True
        mine = self.rank(agent)
        ahead = sum(1 for other in hungry if other != agent and self.rank(other) < mine)
        return free > ahead

    def next_of(self, waiting: Sequence[str], limit: int, in_flight: int, now: float) -> int | None:
        """Which waiting call (an index into ``waiting``, oldest first) a free place goes to: the
        first by rank among those whose agent may take it; None: none may."""
        best: int | None = None
        for i, agent in enumerate(waiting):
            if best is not None and self.rank(agent) >= self.rank(waiting[best]):
                continue
            if self.may_take(agent, limit, in_flight, now, waiting):
                best = i
        return best
