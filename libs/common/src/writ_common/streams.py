"""JetStream stream definitions, declared idempotently by every process at start."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from writ_common import subjects

# An agent's retry horizon for Nats-Msg-Id dedupe. Beyond it, the expected-sequence fence on
# the intent's subject (and the derived intent id) still refuse a second submission.
DUPLICATE_WINDOW_SECONDS = 24 * 3600.0


# Sizing (docs in README, "Sizing"): every stream is bounded so no one can fill the disk. The
# intents and ledger streams refuse new writes when full (discard NEW): an intent's history and the
# receipt chain are never dropped silently to make room; the writer gets `storage_full`. Dead
# letters are evidence, not state: the oldest make room (discard OLD).
GIB, MIB = 1024**3, 1024**2
MAX_MESSAGE_BYTES = 2 * MIB  # a tool's output is kept up to 1 MiB of JSON (max_output_bytes)
# One intent's messages on one subject token: a handful legitimately (attempts, approvers'
# decisions); the cap stops an agent flooding its own intent's submitted subject.
MAX_MSGS_PER_INTENT_SUBJECT = 256


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Byte budgets per stream; an operator raises them with WRIT_STREAM_LIMITS-style settings."""

    intents_max_bytes: int = 8 * GIB
    ledger_max_bytes: int = 4 * GIB
    control_max_bytes: int = 256 * MIB
    dlq_max_bytes: int = 256 * MIB
    dlq_max_age_seconds: float = 30 * 86400.0


def _stream(
    name: str,
    subject: str,
    *,
    max_bytes: int,
    discard: DiscardPolicy = DiscardPolicy.NEW,
    max_age: float | None = None,
    per_subject: int | None = None,
) -> StreamConfig:
    """A file-backed stream with the dedupe window, Direct Get and the limits every Writ stream has."""
    return StreamConfig(
        name=name,
        subjects=[subject],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=discard,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        allow_direct=True,
        max_bytes=max_bytes,
        max_msg_size=MAX_MESSAGE_BYTES,
        max_age=max_age,
        max_msgs_per_subject=per_subject or -1,
        discard_new_per_subject=bool(per_subject),
    )


def stream_configs(limits: StreamLimits | None = None) -> tuple[StreamConfig, ...]:
    """Writ's streams with their limits."""
    lim = limits or StreamLimits()
    return (
        _stream(
            subjects.INTENTS_STREAM,
            "writ.intent.>",
            max_bytes=lim.intents_max_bytes,
            per_subject=MAX_MSGS_PER_INTENT_SUBJECT,
        ),
        _stream(subjects.IDENTITY_STREAM, "writ.identity.>", max_bytes=lim.control_max_bytes),
        _stream(subjects.REGISTRY_STREAM, "writ.registry.>", max_bytes=lim.control_max_bytes),
        _stream(subjects.POLICY_STREAM, "writ.policy.>", max_bytes=lim.control_max_bytes),
        _stream(subjects.EXECUTOR_STREAM, "writ.executor.>", max_bytes=lim.control_max_bytes),
        _stream(subjects.LEDGER_STREAM, "writ.ledger.>", max_bytes=lim.ledger_max_bytes),
        _stream(
            subjects.DLQ_STREAM,
            "writ.dlq.>",
            max_bytes=lim.dlq_max_bytes,
            discard=DiscardPolicy.OLD,
            max_age=lim.dlq_max_age_seconds,
        ),
    )


STREAMS: tuple[StreamConfig, ...] = stream_configs()


async def ensure_streams(
    js: JetStreamContext, *, replicas: int = 1, limits: StreamLimits | None = None, update: bool = False
) -> None:
    """Create Writ's streams if missing (safe to call from every process, concurrently), each
    stored on ``replicas`` servers of the cluster (an existing stream keeps its replicas).

    ``update``: the operator's runtime also brings an existing stream's limits to these (services
    may not administer streams, so they only create)."""
    for config in (dataclasses.replace(c, num_replicas=replicas) for c in stream_configs(limits)):
        try:
            info = await js.stream_info(str(config.name))
        except NotFoundError:
            info = None
        if info is not None:
            if update and _limits_of(info.config) != _limits_of(config):
                await js.update_stream(dataclasses.replace(config, num_replicas=info.config.num_replicas))
            continue
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            # 10058: exists with a different config (an older Writ); keep it, never wipe data.
            if exc.err_code != 10058:
                raise


def _limits_of(config: StreamConfig) -> tuple[object, ...]:
    return (
        config.max_bytes,
        config.max_msg_size,
        config.discard,
        config.max_age or None,
        config.max_msgs_per_subject if (config.max_msgs_per_subject or 0) > 0 else None,
    )
