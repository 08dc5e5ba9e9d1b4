-- `payables stats --since` counts the tool-call rows of the audit chain in its window: this
-- partial index finds them by time without reading the chain's other rows.
-- Built concurrently: runs go on appending to the chain while it builds (state/db.py
-- Migration).
CREATE INDEX CONCURRENTLY audit_events_tool_calls_created ON audit_events (created_at)
    WHERE kind = 'tool_call';
