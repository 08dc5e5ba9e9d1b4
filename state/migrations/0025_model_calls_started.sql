-- Each model call is counted on its thread as it starts (state/costs.py `start_model_call`).
--
-- The run's model-call budget counted the calls in graph state, which a step adds to only
-- when it returns: a worker killed inside a step (out of memory, a crash loop under a
-- supervisor that restarts it and continues the thread) lost the count of every call that
-- step had made, and each restart spent again. With a budget of 4, a step killed after its
-- calls five times made 19. Now a call may start only while the calls started on the thread,
-- crashed attempts included, are under the budget. `payables seed` clears the counts with
-- the threads, and `payables prune` with a thread's checkpoints.
CREATE TABLE model_calls_started (
    thread_id  TEXT PRIMARY KEY,
    calls      INTEGER NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
