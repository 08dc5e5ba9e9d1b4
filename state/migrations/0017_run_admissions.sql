-- Admission to the tenant's daily cost cap is once per thread (state/costs.py, admit_run):
-- a run's first step that runs again (a node retry after a transient error, `payables
-- continue`, a dead letter's replay) finds its thread here, so it is neither counted in
-- `tenant_daily_costs.runs` again nor refused by a cap it was admitted under. Only admitted
-- threads are kept; `payables prune` deletes a thread's row with its checkpoints (a pruned
-- thread never runs again) and `payables seed` clears them with the threads.
CREATE TABLE run_admissions (
    thread_id   TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    day         DATE NOT NULL,
    admitted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
