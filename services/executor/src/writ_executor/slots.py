"""How many calls each tool server may have in flight from one executor replica. Pure."""

from __future__ import annotations

from collections import Counter


class ServerSlots:
    """At most ``limit`` calls per server at once: a slow or hanging server fills its own slots and
    no one else's. Taken before ``execution.started`` is recorded, so a call that finds no slot
    has not begun and simply comes back later."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.limits: dict[str, int] = {}  # a server's own limit, as the executor's loop set it
        self._in_flight: Counter[str] = Counter()

    def limit_of(self, server: str, capacity: int | None = None) -> int:
        """The server's limit; ``capacity``: the most calls it takes at once, as declared for it."""
        limit = self.limits.get(server, self.limit)
        return limit if capacity is None else max(1, min(limit, capacity))

    def take(self, server: str, capacity: int | None = None) -> bool:
        if self._in_flight[server] >= self.limit_of(server, capacity):
            return False
        self._in_flight[server] += 1
        return True

    def give_back(self, server: str) -> None:
        self._in_flight[server] -= 1
        if self._in_flight[server] <= 0:
            del self._in_flight[server]
