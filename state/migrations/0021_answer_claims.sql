-- One answer at a time per approval request on the LangGraph server (state/answer_claims.py).
-- The server queues a resume behind the runs on its thread; without a claim, a second
-- reviewer's answer to the request another reviewer's queued answer was about to settle was
-- accepted, and found nothing waiting when its turn came (the run had finished), or a
-- changed request. Now the server refuses it at once with a 409 naming who answered.
-- A claim is deleted by the approval node with the answer it made (recorded or refused);
-- one whose run never reached the node (cancelled, crashed) stops counting after its
-- expiry. `payables seed` clears them with the threads, and `payables prune` with a
-- thread's checkpoints.
CREATE TABLE answer_claims (
    tenant      TEXT NOT NULL,
    request_key TEXT NOT NULL,
    thread_id   TEXT NOT NULL,
    reviewer    TEXT NOT NULL,
    claimed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, request_key)
);
CREATE INDEX answer_claims_thread ON answer_claims (thread_id);
