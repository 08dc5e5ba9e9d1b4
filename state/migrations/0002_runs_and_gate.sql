-- The agent's own bookkeeping: the gate's idempotency ledger, approval grants, and a
-- per-thread run index so pending approvals can be listed without scanning checkpoints.

CREATE TABLE tool_calls (
    idempotency_key TEXT PRIMARY KEY,
    thread_id       TEXT NOT NULL,
    step_id         TEXT NOT NULL,
    tool            TEXT NOT NULL,
    args            JSONB NOT NULL,
    tier            TEXT NOT NULL,
    result          JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX tool_calls_thread ON tool_calls (thread_id);

-- One row per reviewer decision. The gate reads these (never the graph state) to decide
-- whether an irreversible call was approved, so a forged state cannot grant approval.
CREATE TABLE approval_decisions (
    decision_id  BIGSERIAL PRIMARY KEY,
    thread_id    TEXT NOT NULL,
    step_id      TEXT NOT NULL,
    tool         TEXT NOT NULL,
    args_hash    TEXT NOT NULL,
    reviewer_id  TEXT NOT NULL,
    reviewer_role TEXT NOT NULL,
    decision     TEXT NOT NULL CHECK (decision IN ('approve', 'edit', 'reject')),
    reason       TEXT NOT NULL DEFAULT '',
    edited_args  JSONB,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (thread_id, step_id, args_hash, reviewer_id)
);

CREATE TABLE runs (
    thread_id    TEXT PRIMARY KEY,
    request      TEXT NOT NULL,
    requester    TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    route        TEXT,
    status       TEXT NOT NULL,
    summary      TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX runs_status ON runs (status, updated_at);
