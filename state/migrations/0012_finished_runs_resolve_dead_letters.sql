-- A dead letter asks an operator to act. Once its thread finishes by other means (a later
-- `payables resume` or `continue`, or a run through the LangGraph server), a replay would
-- find nothing left to do, yet the letter stayed open in `payables deadletters list` until
-- someone replayed it. Respond records the run's final status in the run index; as it does,
-- the thread's open dead letters are resolved, in the same statement (no round trip more).
--
-- Only final statuses: a thread paused at an approval again has not got past every failure
-- (the replay would point the operator to `payables resume`, and does).
-- SKIP LOCKED: a dead letter being replayed is locked by its claim (`claim_dead_letter`)
-- while the replay's own run reaches respond; the replay records that outcome itself, and
-- waiting for the claim here would wait for the run that waits here.
CREATE FUNCTION resolve_dead_letters_of_finished_run() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE dead_letters
       SET status = 'resolved',
           replayed_at = now(),
           replay_note = format('not replayed: thread %s finished (%s) by a later run',
                                NEW.thread_id, NEW.status)
     WHERE dead_letter_id IN (
           SELECT dead_letter_id FROM dead_letters
            WHERE thread_id = NEW.thread_id AND status = 'open'
              FOR UPDATE SKIP LOCKED);
    RETURN NULL;
END;
$$;

CREATE TRIGGER runs_finished_resolve_dead_letters
    AFTER INSERT OR UPDATE OF status ON runs
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'refused', 'escalated', 'failed'))
    EXECUTE FUNCTION resolve_dead_letters_of_finished_run();
