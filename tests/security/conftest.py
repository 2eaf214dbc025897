"""Fixtures for the security tier: each test is an attack, repelled. Tests that need a plane use the
integration tier's in-process spine (the five real services against the session's real nats-server
and Redis); the rest are pure."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))

from inprocess import spine

__all__ = ["spine"]
