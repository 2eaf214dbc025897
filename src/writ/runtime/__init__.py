"""The embedded runtime: local nats-server, redis-server and the services under one supervisor."""

from writ.runtime.processes import ManagedProcess, free_port, start_nats, start_redis
from writ.runtime.supervisor import SERVICES, Plane, PlaneAlreadyRunning, UnitStatus, run_plane

__all__ = [
    "SERVICES",
    "ManagedProcess",
    "Plane",
    "PlaneAlreadyRunning",
    "UnitStatus",
    "free_port",
    "run_plane",
    "start_nats",
    "start_redis",
]
