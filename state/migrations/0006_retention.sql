-- Retention (`payables prune`): a finished thread's checkpoints can be deleted after a
-- while; its run-index row stays, marked, so listings keep the history and `payables show`
-- can say the thread was pruned instead of "no such thread".
ALTER TABLE runs ADD COLUMN pruned_at TIMESTAMPTZ;

-- A dead letter is "resolved" when a replay found nothing left to replay: the thread had
-- finished by other means, or it waits for a reviewer (who answers with `payables resume`).
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_status_check;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_status_check
    CHECK (status IN ('open', 'replayed', 'failed_again', 'resolved'));
