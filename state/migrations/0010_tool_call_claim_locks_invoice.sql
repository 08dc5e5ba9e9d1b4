-- The gate's claim also locks the invoice a write names (tools/gate.py, `_GatedCall.once`).
--
-- tool_call_claim(key, invoice_id) takes the key's lock as before (migration 0009); when the
-- key has no recorded call yet and the call names an invoice, it then locks that invoice's
-- row (FOR UPDATE, held to the end of the caller's transaction). The gate reads the
-- invoice's match inputs in its next statement, whose snapshot is taken after the lock, and
-- both the approval check and the handler use that one read. Locks are taken in the same
-- order as before (key, then invoice row), so callers cannot deadlock on them.
DROP FUNCTION tool_call_claim(TEXT);

CREATE FUNCTION tool_call_claim(p_key TEXT, p_invoice_id TEXT) RETURNS JSONB
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_result JSONB;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_key, 0));
    SELECT result INTO v_result FROM tool_calls WHERE idempotency_key = p_key;
    IF v_result IS NULL AND p_invoice_id IS NOT NULL THEN
        PERFORM 1 FROM invoices WHERE invoice_id = p_invoice_id FOR UPDATE;
    END IF;
    RETURN v_result;
END;
$$;
