"""JetStream stream definitions, declared idempotently by every process at start."""

from __future__ import annotations

import contextlib
import dataclasses

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from writ_common import subjects

# An agent's retry horizon for Nats-Msg-Id dedupe. Beyond it, the expected-sequence fence on
# the intent's subject (and the derived intent id) still refuse a second submission.
DUPLICATE_WINDOW_SECONDS = 24 * 3600.0


def _stream(name: str, subject: str) -> StreamConfig:
    """A file-backed stream with the dedupe window and Direct Get that every Writ stream uses."""
    return StreamConfig(
        name=name,
        subjects=[subject],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        allow_direct=True,
    )


STREAMS: tuple[StreamConfig, ...] = (
    _stream(subjects.INTENTS_STREAM, "writ.intent.>"),
    _stream(subjects.IDENTITY_STREAM, "writ.identity.>"),
    _stream(subjects.REGISTRY_STREAM, "writ.registry.>"),
    _stream(subjects.POLICY_STREAM, "writ.policy.>"),
    _stream(subjects.EXECUTOR_STREAM, "writ.executor.>"),
    _stream(subjects.LEDGER_STREAM, "writ.ledger.>"),
    _stream(subjects.DLQ_STREAM, "writ.dlq.>"),
)


async def ensure_streams(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create Writ's streams if missing (safe to call from every process, concurrently), each
    stored on ``replicas`` servers of the cluster (an existing stream keeps what it has)."""
    for config in (dataclasses.replace(c, num_replicas=replicas) for c in STREAMS):
        with contextlib.suppress(NotFoundError):
            # Exists: nothing to do (and a service's bus user may not create streams at all).
            await js.stream_info(str(config.name))
            continue
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            # 10058: exists with a different config (an older Writ); keep it, never wipe data.
            if exc.err_code != 10058:
                raise
