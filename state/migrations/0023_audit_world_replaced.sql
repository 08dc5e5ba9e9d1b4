-- `payables seed --discard-history` leaves a row in the audit chain (state/world.py).
--
-- Replacing a world in which the agent had made payments, bank changes or emails erased
-- them with their ledger rows and approvals, and the chain, which outlives worlds, said
-- nothing of it: the erasure was visible only as rows missing elsewhere. Now the seed
-- appends a `world_replaced` event to each tenant chain whose committed irreversible or
-- destructive calls it erases, in the transaction that erases them, saying how many of
-- each tool, which world replaced them, and who seeded it.
--
-- Only the CHECK on kinds changes.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_kind_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_kind_check CHECK (kind IN (
    'request_received', 'route', 'plan', 'tool_call', 'guard_flag', 'approval_requested',
    'decision', 'outcome', 'world_replaced'));
