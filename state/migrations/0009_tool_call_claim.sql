-- One round trip for the gate's idempotency claim (tools/gate.py, `_GatedCall.once`).
--
-- tool_call_claim takes the key's lock (pg_advisory_xact_lock, held to the end of the
-- caller's transaction) and returns the result of the call already recorded under the key,
-- or NULL (tool_calls.result is never NULL). Racing callers with one key queue on the lock
-- until the first commits. Each statement of a VOLATILE PL/pgSQL function takes a new
-- snapshot, so the lookup sees a row that committed while this caller waited for the lock.
CREATE FUNCTION tool_call_claim(p_key TEXT) RETURNS JSONB
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_key, 0));
    RETURN (SELECT result FROM tool_calls WHERE idempotency_key = p_key);
END;
$$;
