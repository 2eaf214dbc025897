"""The views' tables. Every row is derived from the log alone (no wall-clock "projected_at"), so a
rebuild from the first event yields identical tables; ``SCHEMA_VERSION`` changes rebuild the file."""

from __future__ import annotations

SCHEMA_VERSION = 6

DDL = """
CREATE TABLE IF NOT EXISTS tracking (
    stream TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    event_at TEXT
);
CREATE TABLE IF NOT EXISTS intents (
    intent_id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    on_behalf_of TEXT,
    tool TEXT,
    server TEXT,
    tool_name TEXT,
    tool_digest TEXT,
    args_digest TEXT,
    idempotency_key TEXT,
    status TEXT NOT NULL,
    stage TEXT,
    code TEXT,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    submitted_seq INTEGER NOT NULL,
    hour TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    authenticated_at TEXT,
    planned_at TEXT,
    approval_requested_at TEXT,
    decided_at TEXT,
    started_at TEXT,
    ended_at TEXT,
    updated_at TEXT NOT NULL,
    authenticate_ms REAL,
    plan_ms REAL,
    authorize_ms REAL,
    approval_ms REAL,
    execute_ms REAL,
    total_ms REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS intents_by_seq ON intents(submitted_seq);
CREATE INDEX IF NOT EXISTS intents_by_agent ON intents(agent_id, submitted_seq);
CREATE INDEX IF NOT EXISTS intents_by_tool ON intents(tool, submitted_seq);
CREATE INDEX IF NOT EXISTS intents_by_status ON intents(status, submitted_seq);
CREATE INDEX IF NOT EXISTS intents_by_code ON intents(code, submitted_seq);
CREATE INDEX IF NOT EXISTS intents_by_time ON intents(submitted_at);
CREATE TABLE IF NOT EXISTS intent_events (
    seq INTEGER PRIMARY KEY,
    intent_id TEXT NOT NULL,
    type TEXT NOT NULL,
    event_id TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    producer TEXT NOT NULL,
    causation_id TEXT,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS intent_events_by_intent ON intent_events(intent_id, seq);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY,
    intent_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    policy_digest TEXT,
    policy_ids TEXT NOT NULL,
    code TEXT,
    reason TEXT,
    reasons TEXT NOT NULL,
    decided_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_intent ON decisions(intent_id, seq);
CREATE TABLE IF NOT EXISTS shadow_decisions (
    seq INTEGER PRIMARY KEY,
    intent_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    tool TEXT,
    shadow_digest TEXT NOT NULL,
    shadow_kind TEXT NOT NULL,
    shadow_policy_ids TEXT NOT NULL,
    shadow_code TEXT,
    enforced_digest TEXT,
    enforced_kind TEXT NOT NULL,
    enforced_policy_ids TEXT NOT NULL,
    enforced_code TEXT,
    agrees INTEGER NOT NULL,
    decided_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS shadow_decisions_by_digest ON shadow_decisions(shadow_digest, seq);
CREATE TABLE IF NOT EXISTS rollouts (
    rollout_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    candidate_digest TEXT NOT NULL,
    previous_digest TEXT,
    slice TEXT NOT NULL,
    triggers TEXT NOT NULL,
    promote_after_s REAL NOT NULL,
    cooldown_s REAL NOT NULL,
    min_decisions INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    status TEXT NOT NULL,
    ended_at TEXT,
    ended_by TEXT,
    trigger TEXT,
    reason TEXT,
    signals TEXT
);
CREATE TABLE IF NOT EXISTS approvals (
    intent_id TEXT PRIMARY KEY,
    requested_seq INTEGER NOT NULL,
    requested_at TEXT NOT NULL,
    approver_group TEXT NOT NULL,
    quorum INTEGER NOT NULL,
    expires_at TEXT NOT NULL,
    approval_digest TEXT NOT NULL,
    policy_digest TEXT NOT NULL,
    status TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    denied_by TEXT,
    decided_at TEXT
);
CREATE TABLE IF NOT EXISTS approval_decisions (
    seq INTEGER PRIMARY KEY,
    intent_id TEXT NOT NULL,
    approver_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    code TEXT,
    reason TEXT,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approval_decisions_by_intent ON approval_decisions(intent_id, seq);
CREATE TABLE IF NOT EXISTS executions (
    intent_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    server TEXT,
    tool TEXT,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    outcome TEXT NOT NULL,
    retryable INTEGER,
    code TEXT,
    reason TEXT,
    duration_ms REAL,
    retry_after_ms INTEGER,
    PRIMARY KEY (intent_id, attempt)
);
CREATE TABLE IF NOT EXISTS receipts (
    intent_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    agent_id TEXT NOT NULL,
    status TEXT NOT NULL,
    stage TEXT NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    tool TEXT,
    server TEXT,
    tool_digest TEXT,
    policy_digest TEXT,
    policy_ids TEXT NOT NULL,
    approvers TEXT NOT NULL,
    receipt_hash TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    ledger_key_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_by_position ON receipts(position);
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    teams TEXT NOT NULL,
    acts_for TEXT NOT NULL,
    key_id TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    key_rotated_at TEXT,
    previous_key_id TEXT,
    revoked_at TEXT,
    revoked_reason TEXT,
    suspended_at TEXT,
    suspended_reason TEXT,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS servers (
    name TEXT PRIMARY KEY,
    transport TEXT NOT NULL,
    target TEXT,
    registered_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tools (
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    tool_digest TEXT NOT NULL,
    description TEXT,
    read_only INTEGER NOT NULL,
    destructive INTEGER NOT NULL,
    idempotent INTEGER NOT NULL,
    open_world INTEGER NOT NULL,
    state TEXT NOT NULL,
    discovered_at TEXT NOT NULL,
    accepted_by TEXT,
    PRIMARY KEY (server, tool, tool_digest)
);
CREATE TABLE IF NOT EXISTS rollups (
    hour TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    tool TEXT NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0,
    succeeded INTEGER NOT NULL DEFAULT 0,
    denials INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    rejections INTEGER NOT NULL DEFAULT 0,
    expirations INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, agent_id, tool)
);
CREATE TABLE IF NOT EXISTS reader_tokens (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    scope TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX IF NOT EXISTS reader_tokens_by_hash ON reader_tokens(token_hash);
"""

# Never readable through `writ views sql`: token hashes are not secrets, but nobody needs them.
PRIVATE_TABLES = frozenset({"reader_tokens"})
