"""Waiting for a receipt while the bus cannot answer yet (every node of a cluster restarting, the
ledger stream's leader being elected): the wait goes on to its deadline and then says why, instead
of raising nats-py's NoRespondersError at the first read (seen in `make soak-cluster`, "all 3
killed at once")."""

from __future__ import annotations

import time
from pathlib import Path

import nats
import pytest

from writ.runtime.processes import start_nats
from writ.sdk import ReceiptTimeout, wait_receipt

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_a_ledger_stream_not_answering_is_waited_through_then_named_in_the_timeout(tmp_path: Path) -> None:
    bare = start_nats(tmp_path / "store")  # JetStream on, but no Writ stream: no one answers the read
    try:
        nc = await nats.connect(bare.url)
        started = time.monotonic()
        with pytest.raises(ReceiptTimeout) as raised:
            await wait_receipt(nc, "in-nothing", timeout=1.5)
        assert time.monotonic() - started >= 1.4  # waited to its deadline, read after read
        assert "the bus did not answer the last read (NoRespondersError" in str(raised.value)
        await nc.close()
    finally:
        bare.stop()
