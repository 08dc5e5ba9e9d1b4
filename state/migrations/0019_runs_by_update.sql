-- `payables threads` lists the most recently updated runs first and stops after --limit:
-- with this index that is a short backward walk, not a sort of every run ever recorded.
-- Built concurrently: runs go on writing the table while it builds (state/db.py Migration).
CREATE INDEX CONCURRENTLY runs_updated ON runs (updated_at);
