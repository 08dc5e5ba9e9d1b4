-- The gate's claim also holds the vendor of the invoice a write names (tools/gate.py).
--
-- schedule_payment pays the vendor master account as the gate read it, under the invoice's
-- lock (migration 0010). A bank change (update_vendor_bank_account) locks the vendor row,
-- not the invoice, so it could commit between that read and the payment's insert, and the
-- payment then went to the old account after the master had changed. The claim now also
-- takes the vendor row FOR SHARE, after the invoice (locks in the same order everywhere:
-- key, invoice, vendor; a bank change takes no invoice lock), held to the end of the call's
-- transaction: a bank change waits for the payment, or the payment reads the new account.
-- Payments, stagings and flags of one vendor's invoices share the lock and do not wait on
-- each other. Same signature as 0010: the current release's callers are unchanged.
CREATE OR REPLACE FUNCTION tool_call_claim(p_key TEXT, p_invoice_id TEXT) RETURNS JSONB
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_result JSONB;
    v_vendor TEXT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_key, 0));
    SELECT result INTO v_result FROM tool_calls WHERE idempotency_key = p_key;
    IF v_result IS NULL AND p_invoice_id IS NOT NULL THEN
        SELECT vendor_id INTO v_vendor FROM invoices WHERE invoice_id = p_invoice_id FOR UPDATE;
        IF FOUND THEN
            PERFORM 1 FROM vendors WHERE vendor_id = v_vendor FOR SHARE;
        END IF;
    END IF;
    RETURN v_result;
END;
$$;
