-- A payment's approval covers the account it pays (nodes/approval.py, tools/gate.py).
--
-- schedule_payment pays the vendor master account as the gate reads it, and approvals were
-- bound to the call's arguments only, which do not name the account: a bank change that
-- committed between a payment's approval and its execution sent the money to an account no
-- reviewer was shown. Now the approval node records, before it interrupts, the payee each
-- payment step's request shows (one row per request and step; the node re-runs on resume
-- and re-reads the vendor, and keeps the first row, so a decision is bound to what its
-- reviewer saw), and each decision carries that payee. The gate refuses a payment when an
-- approval of it names another payee than the vendor master holds, under the locks it
-- already takes (0016).
--
-- payee_digest is sha256 of the whole account (tools.contract.payee_digest): like the
-- account, it stays in the database. payee_masked (last four characters) is for messages.
-- Containers of the previous release (rolling deploys) insert decisions without the new
-- columns: NULL, which the gate takes as an approval that does not cover the payee.
CREATE TABLE approval_payees (
    request_key  TEXT NOT NULL,
    step_id      TEXT NOT NULL,
    thread_id    TEXT NOT NULL,
    payee_digest TEXT NOT NULL,
    payee_masked TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (request_key, step_id)
);

ALTER TABLE approval_decisions ADD COLUMN payee_digest TEXT, ADD COLUMN payee_masked TEXT;
