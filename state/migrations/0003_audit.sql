-- The tamper-evident audit chain: one append-only, hash-chained log per tenant.
-- What is hashed, how appends are serialised and how verification works: state/audit.py.

CREATE TABLE audit_events (
    id         BIGSERIAL PRIMARY KEY,
    tenant     TEXT NOT NULL,
    seq        BIGINT NOT NULL CHECK (seq > 0),
    thread_id  TEXT,
    kind       TEXT NOT NULL CHECK (kind IN ('request_received', 'route', 'plan', 'tool_call',
                                             'guard_flag', 'approval_requested', 'decision',
                                             'outcome')),
    event_key  TEXT,
    payload    JSONB NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    -- Informational only: not part of the hash (see state/audit.py).
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    -- Gapless per-tenant sequence; the writer holds a per-tenant lock while it appends.
    CONSTRAINT audit_events_tenant_seq UNIQUE (tenant, seq),
    -- Idempotent appends: a node re-run after a resume or a crash records nothing new.
    -- NULL keys never conflict (events that need no de-duplication).
    CONSTRAINT audit_events_tenant_event_key UNIQUE (tenant, event_key)
);
CREATE INDEX audit_events_thread ON audit_events (thread_id, seq);

-- Append-only, enforced in the database: UPDATE, DELETE and TRUNCATE raise, whoever runs
-- them. The agent connects as the table owner (a superuser in the embedded setup), so
-- privileges alone would not hold; a trigger does, short of `ALTER TABLE audit_events
-- DISABLE TRIGGER` by the owner or a superuser. ENABLE ALWAYS makes the triggers fire under
-- `session_replication_role = replica` too, so that setting is no way around them.
CREATE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit rows are never changed or removed; append a new event instead.';
END;
$$;

CREATE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_no_update_delete;
ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_no_truncate;
