-- Run statistics (`payables stats`, state/stats.py).
--
-- One row per node execution, written by the budget guard (runtime/budgets.py): with the
-- node's model spend added to the tenant's day in one statement when it spent any, else in
-- batches (state/step_metrics.py).
-- A node that raised is recorded too (ok = false); a node that paused the run for a
-- reviewer (interrupt) is recorded as ok, and its re-run after the decision as another row.
CREATE TABLE step_metrics (
    id          BIGSERIAL PRIMARY KEY,
    thread_id   TEXT NOT NULL,
    tenant      TEXT NOT NULL,
    node        TEXT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    duration_ms DOUBLE PRECISION NOT NULL CHECK (duration_ms >= 0),
    model_calls INTEGER NOT NULL DEFAULT 0 CHECK (model_calls >= 0),
    tokens      INTEGER NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    cost_usd    NUMERIC(16, 8) NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    ok          BOOLEAN NOT NULL
);
CREATE INDEX step_metrics_started ON step_metrics (started_at);
CREATE INDEX step_metrics_thread ON step_metrics (thread_id);

-- Why a run ended as it did (escalated, failed, refused), as respond wrote it, so the
-- escalation reasons can be counted without reading checkpoints.
ALTER TABLE runs ADD COLUMN reason TEXT NOT NULL DEFAULT '';
CREATE INDEX runs_created ON runs (created_at);
