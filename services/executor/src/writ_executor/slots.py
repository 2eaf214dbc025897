"""How many calls each tool server may have in flight from one executor replica. Pure."""

from __future__ import annotations

from collections import Counter

from writ_executor.fair_share import FairShare

SERVER_BUSY_RETRY = 0.2  # seconds before a call that found no slot (or no place on its route) comes again


class ServerSlots:
    """At most ``limit`` calls per server at once: a slow or hanging server fills its own slots and
    no one else's. Taken before ``execution.started`` is recorded, so a call that finds no slot
    has not begun and simply comes back later. A server's slots are shared between the agents
    calling it (``fair_share``), whichever of its tools they call: one agent flooding one tool does
    not keep another off the server's other tools."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.limits: dict[str, int] = {}  # a server's own limit, as the executor's loop set it
        self._in_flight: Counter[str] = Counter()
        self._shares: dict[str, FairShare] = {}

    def limit_of(self, server: str, capacity: int | None = None) -> int:
        """The server's limit; ``capacity``: the most calls it takes at once, as declared for it."""
        limit = self.limits.get(server, self.limit)
        return limit if capacity is None else max(1, min(limit, capacity))

    def take(
        self, server: str, capacity: int | None = None, *, agent: str = "", now: float = 0.0, long: bool = True
    ) -> bool:
        """A slot for ``agent``'s call (``now``: monotonic seconds); False: none it may take now.
        ``long``: the call's route has calls longer than the slack; only for those is a slot kept
        for an agent refused one (a short call's slot kept idle would cost more calls than it gives)."""
        share = self._shares.setdefault(server, FairShare())
        if not share.may_take(agent, self.limit_of(server, capacity), self._in_flight[server], now, ()):
            if long:
                share.wanted(agent, now, SERVER_BUSY_RETRY)
            return False
        self._in_flight[server] += 1
        share.took(agent, now)
        return True

    def has_room(self, server: str, capacity: int | None = None) -> bool:
        """Whether the server has a slot free (that a call found none means another agent was due it)."""
        return self._in_flight[server] < self.limit_of(server, capacity)

    def give_back(self, server: str, agent: str = "") -> None:
        self._in_flight[server] -= 1
        self._shares[server].gave_back(agent)
        if self._in_flight[server] <= 0:
            del self._in_flight[server]
