"""JetStream stream definitions, declared idempotently by every process at start."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from writ_common import subjects

# An agent's retry horizon for Nats-Msg-Id dedupe. Beyond it, the expected-sequence fence on
# the intent's subject (and the derived intent id) still refuse a second submission.
DUPLICATE_WINDOW_SECONDS = 24 * 3600.0

STREAMS: tuple[StreamConfig, ...] = (
    StreamConfig(
        name=subjects.INTENTS_STREAM,
        subjects=["writ.intent.>"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        allow_direct=True,
        discard=DiscardPolicy.OLD,
    ),
    StreamConfig(
        name=subjects.IDENTITY_STREAM,
        subjects=["writ.identity.>"],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        allow_direct=True,
    ),
    StreamConfig(
        name=subjects.REGISTRY_STREAM,
        subjects=["writ.registry.>"],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        allow_direct=True,
    ),
    StreamConfig(
        name=subjects.POLICY_STREAM,
        subjects=["writ.policy.>"],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        allow_direct=True,
    ),
    StreamConfig(
        name=subjects.EXECUTOR_STREAM,
        subjects=["writ.executor.>"],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        allow_direct=True,
    ),
    StreamConfig(
        name=subjects.LEDGER_STREAM,
        subjects=["writ.ledger.>"],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        allow_direct=True,
    ),
    StreamConfig(
        name=subjects.DLQ_STREAM,
        subjects=["writ.dlq.>"],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        allow_direct=True,
    ),
)


async def ensure_streams(js: JetStreamContext) -> None:
    """Create Writ's streams if missing (safe to call from every process, concurrently)."""
    for config in STREAMS:
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            # 10058: exists with a different config (an older Writ); keep it, never wipe data.
            if exc.err_code != 10058:
                raise
