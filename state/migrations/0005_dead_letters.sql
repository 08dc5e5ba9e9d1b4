-- Runs that failed unexpectedly or exhausted their retries, with what is needed to replay
-- them (`payables deadletters list|show|replay`).
CREATE TABLE dead_letters (
    dead_letter_id BIGSERIAL PRIMARY KEY,
    thread_id      TEXT NOT NULL,
    tenant         TEXT NOT NULL,
    action         TEXT NOT NULL,          -- start | resume | continue | replay
    step           TEXT,                   -- the node that failed, when known
    error_class    TEXT NOT NULL,
    message        TEXT NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 1,
    payload        JSONB NOT NULL,         -- input, checkpoint id, context: enough to replay
    status         TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'replayed', 'failed_again')),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    replayed_at    TIMESTAMPTZ,
    replay_note    TEXT
);
CREATE INDEX dead_letters_open ON dead_letters (status, created_at);
CREATE INDEX dead_letters_thread ON dead_letters (thread_id);
