-- Rolling deploys: while new containers start (and migrate), containers of the previous
-- release keep running, and their gate claims keys with tool_call_claim(key) (migration
-- 0009), which migration 0010 dropped: every gated call of an old container failed with
-- "function does not exist" until it was replaced. The one-argument form is back, as 0009
-- defined it (the key's lock, then the lookup; that release's handlers lock the invoice
-- themselves). Nothing in this release calls it. Drop it in a later release's migration,
-- once no container older than this release can be running.
CREATE FUNCTION tool_call_claim(p_key TEXT) RETURNS JSONB
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_key, 0));
    RETURN (SELECT result FROM tool_calls WHERE idempotency_key = p_key);
END;
$$;
