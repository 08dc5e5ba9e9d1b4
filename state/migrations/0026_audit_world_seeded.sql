-- Every seed leaves a row in the audit chain naming the payments it wrote (state/world.py).
--
-- `payables audit verify` checked that each gated ledger row and decision had its event,
-- but not the other way round: a payment, bank change or email written straight into its
-- table, past the gate, was found by nothing. Now verify also requires each such record
-- to have a ledger row of its tool on its thread that says the same (and that ledger row
-- its event). Payments the seed wrote have no ledger row; the seed's `world_seeded` event
-- lists them, so a payment given a `seed:` key later is found too.
--
-- Only the CHECK on kinds changes.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_kind_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_kind_check CHECK (kind IN (
    'request_received', 'route', 'plan', 'tool_call', 'guard_flag', 'approval_requested',
    'decision', 'outcome', 'world_replaced', 'answer_refused', 'world_seeded'));
