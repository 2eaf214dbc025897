"""The fault tier's rig: each module provides ``fault_plane`` (how its plane runs); the rig on it
is the same everywhere."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from rig import Rig, open_rig

from writ.runtime.supervisor import Plane


@pytest.fixture(scope="module", autouse=True)
def no_shedding() -> Iterator[None]:
    """The fault tier's planes run with admission control off: these tests push bursts at tools
    that serve one write at a time (sqlite) on a machine they saturate, which admission rightly
    answers in part `overloaded`; here every call is to run, so that a lost or doubled call shows.
    Shedding, and its one receipt per intent, is tested in tests/security/test_overload.py."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WRIT_ADMISSION", "false")
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rig(
    fault_plane: Plane,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_mcp: Callable[[Path], list[str]],
    faulty_mcp: Callable[[Path], tuple[list[str], dict[str, str]]],
) -> AsyncIterator[Rig]:
    async with open_rig(fault_plane, tmp_path_factory.mktemp("fault-dbs"), sqlite_mcp, faulty_mcp) as rig:
        yield rig
