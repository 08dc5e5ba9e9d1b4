-- One round trip per audit append (state/audit.py, "Appends").
--
-- audit_append takes the tenant's chain lock (pg_advisory_xact_lock, held to the end of the
-- caller's transaction, or of this statement's when there is none), returns an earlier
-- append of the same event if there is one, and otherwise inserts the row the writer
-- prepared, but only if the writer linked it to the tenant's current head (p_prev_seq and
-- p_prev_hash). When the head is elsewhere (another process appended since the writer last
-- saw it) or the writer sent no hash, it inserts nothing and returns the head and the
-- payload as JSONB returns it, and the writer hashes on those and calls again. The writer
-- computes every hash; this function only guards the link. Each statement of a VOLATILE
-- PL/pgSQL function takes a new snapshot, so the reads below see every append that
-- committed before the lock was granted.
CREATE FUNCTION audit_append(
    p_lock_class INTEGER,
    p_synchronous_commit TEXT,
    p_tenant TEXT,
    p_thread_id TEXT,
    p_kind TEXT,
    p_event_key TEXT,
    p_payload JSONB,
    p_prev_seq BIGINT,
    p_prev_hash TEXT,
    p_hash TEXT
) RETURNS TABLE (id BIGINT, seq BIGINT, hash TEXT, created BOOLEAN, payload JSONB)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    head_seq BIGINT;
    head_hash TEXT;
    new_id BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock_class, hashtext(p_tenant));
    IF p_synchronous_commit IS NOT NULL THEN  -- this transaction's commit mode
        PERFORM set_config('synchronous_commit', p_synchronous_commit, true);
    END IF;
    IF p_event_key IS NOT NULL THEN
        RETURN QUERY SELECT e.id, e.seq, e.hash, false, e.payload FROM audit_events AS e
            WHERE e.tenant = p_tenant AND e.event_key = p_event_key;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    SELECT a.seq, a.hash INTO head_seq, head_hash FROM audit_events AS a
        WHERE a.tenant = p_tenant ORDER BY a.seq DESC LIMIT 1;
    head_seq := COALESCE(head_seq, 0);
    IF p_hash IS NULL OR head_seq <> p_prev_seq
            OR (head_seq > 0 AND head_hash IS DISTINCT FROM p_prev_hash) THEN
        -- Not inserted (id is NULL): the head, for the writer to hash on.
        RETURN QUERY SELECT NULL::BIGINT, head_seq, head_hash, false, p_payload;
        RETURN;
    END IF;
    INSERT INTO audit_events (tenant, seq, thread_id, kind, event_key, payload, prev_hash, hash)
        VALUES (p_tenant, head_seq + 1, p_thread_id, p_kind, p_event_key, p_payload,
                p_prev_hash, p_hash)
        RETURNING audit_events.id INTO new_id;
    RETURN QUERY SELECT new_id, head_seq + 1, p_hash, true, NULL::JSONB;
END;
$$;
