-- Status, kind and role columns hold only the values the code writes and reads. A run
-- whose status is none of them (a misspelt 'complete', say) would never count as finished
-- for `payables prune` (state/retention.py) nor resolve its dead letters (migration 0012);
-- a decision, a dead letter or a ledger row with an unknown role, action or tier would be
-- read by no rule meant for it. The code spells the same lists: state/routes.py RunStatus,
-- state/deadletters.py DeadLetterAction, tools/contract.py Tier and state/approvals.py
-- REVIEWER_ROLES.
ALTER TABLE runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('running', 'interrupted', 'completed', 'refused', 'escalated', 'failed'));
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_action_check
    CHECK (action IN ('start', 'resume', 'continue', 'replay'));
ALTER TABLE tool_calls ADD CONSTRAINT tool_calls_tier_check
    CHECK (tier IN ('read', 'reversible', 'irreversible', 'destructive'));
ALTER TABLE approval_decisions ADD CONSTRAINT approval_decisions_role_check
    CHECK (reviewer_role IN ('clerk', 'approver', 'controller'));
