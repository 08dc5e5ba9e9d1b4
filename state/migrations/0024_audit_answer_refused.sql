-- A refused answer to an approval leaves a row in the audit chain (`answer_refused`).
--
-- A requester approving their own request, a reviewer signing twice where two must sign, a
-- role that cannot give the signature a payment needs: each was refused and recorded
-- nowhere, so the attempts a segregation-of-duties review looks for left no trace. Now the
-- approval step (any answer it refuses, on the CLI or the server) and the server's admission
-- of a resume (its 403s) append one event per refusal: who, in which role, why.
--
-- Only the CHECK on kinds changes.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_kind_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_kind_check CHECK (kind IN (
    'request_received', 'route', 'plan', 'tool_call', 'guard_flag', 'approval_requested',
    'decision', 'outcome', 'world_replaced', 'answer_refused'));
