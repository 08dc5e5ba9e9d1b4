-- The AP world: vendors, purchase orders, goods receipts, invoices, payments, policy.
-- Money is NUMERIC(14,2); quantities NUMERIC(14,3); currencies ISO 4217 codes.

CREATE TABLE vendors (
    vendor_id          TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    remit_bank_account TEXT NOT NULL,
    remit_bank_name    TEXT NOT NULL DEFAULT '',
    contact_email      TEXT NOT NULL,
    currency           CHAR(3) NOT NULL,
    status             TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'blocked'))
);

CREATE TABLE purchase_orders (
    po_number  TEXT PRIMARY KEY,
    vendor_id  TEXT NOT NULL REFERENCES vendors (vendor_id),
    currency   CHAR(3) NOT NULL,
    status     TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed', 'cancelled')),
    issued_on  DATE NOT NULL
);

CREATE TABLE po_lines (
    po_number   TEXT NOT NULL REFERENCES purchase_orders (po_number) ON DELETE CASCADE,
    line_no     INTEGER NOT NULL CHECK (line_no > 0),
    sku         TEXT NOT NULL,
    description TEXT NOT NULL,
    quantity    NUMERIC(14, 3) NOT NULL CHECK (quantity > 0),
    unit_price  NUMERIC(14, 2) NOT NULL CHECK (unit_price >= 0),
    PRIMARY KEY (po_number, line_no)
);

CREATE TABLE goods_receipts (
    receipt_id  TEXT PRIMARY KEY,
    po_number   TEXT NOT NULL REFERENCES purchase_orders (po_number) ON DELETE CASCADE,
    received_on DATE NOT NULL
);

CREATE TABLE receipt_lines (
    receipt_id        TEXT NOT NULL REFERENCES goods_receipts (receipt_id) ON DELETE CASCADE,
    po_line_no        INTEGER NOT NULL,
    quantity_received NUMERIC(14, 3) NOT NULL CHECK (quantity_received >= 0),
    PRIMARY KEY (receipt_id, po_line_no)
);

-- po_number is deliberately not a foreign key: an invoice can cite a PO we do not have,
-- and that is an exception to detect, not a row to refuse.
CREATE TABLE invoices (
    invoice_id     TEXT PRIMARY KEY,
    vendor_id      TEXT NOT NULL REFERENCES vendors (vendor_id),
    invoice_number TEXT NOT NULL,
    po_number      TEXT,
    invoice_date   DATE NOT NULL,
    due_date       DATE,
    currency       CHAR(3) NOT NULL,
    subtotal       NUMERIC(14, 2) NOT NULL,
    tax            NUMERIC(14, 2) NOT NULL DEFAULT 0,
    total          NUMERIC(14, 2) NOT NULL,
    bank_account   TEXT,
    notes          TEXT NOT NULL DEFAULT '',
    document_text  TEXT NOT NULL DEFAULT '',
    status         TEXT NOT NULL DEFAULT 'received'
        CHECK (status IN ('received', 'staged', 'flagged', 'scheduled', 'paid', 'rejected'))
);
CREATE INDEX invoices_vendor_number ON invoices (vendor_id, invoice_number);

CREATE TABLE invoice_lines (
    invoice_id  TEXT NOT NULL REFERENCES invoices (invoice_id) ON DELETE CASCADE,
    line_no     INTEGER NOT NULL CHECK (line_no > 0),
    po_line_no  INTEGER,
    description TEXT NOT NULL,
    quantity    NUMERIC(14, 3) NOT NULL,
    unit_price  NUMERIC(14, 2) NOT NULL,
    amount      NUMERIC(14, 2) NOT NULL,
    PRIMARY KEY (invoice_id, line_no)
);

CREATE TABLE payments (
    payment_id      TEXT PRIMARY KEY,
    invoice_id      TEXT NOT NULL REFERENCES invoices (invoice_id),
    vendor_id       TEXT NOT NULL REFERENCES vendors (vendor_id),
    amount          NUMERIC(14, 2) NOT NULL CHECK (amount > 0),
    currency        CHAR(3) NOT NULL,
    payee_account   TEXT NOT NULL,
    pay_on          DATE NOT NULL,
    status          TEXT NOT NULL DEFAULT 'scheduled' CHECK (status IN ('scheduled', 'paid', 'void')),
    idempotency_key TEXT NOT NULL UNIQUE,
    thread_id       TEXT,
    approved_by     JSONB NOT NULL DEFAULT '[]',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The business rule behind "never pay twice": at most one live payment per invoice,
-- whatever thread, step or key asks for another.
CREATE UNIQUE INDEX payments_one_live_per_invoice ON payments (invoice_id) WHERE status <> 'void';

CREATE TABLE policy_documents (
    doc_id TEXT PRIMARY KEY,
    title  TEXT NOT NULL
);

CREATE TABLE policy_passages (
    passage_id TEXT PRIMARY KEY,
    doc_id     TEXT NOT NULL REFERENCES policy_documents (doc_id) ON DELETE CASCADE,
    heading    TEXT NOT NULL,
    body       TEXT NOT NULL,
    search     TSVECTOR GENERATED ALWAYS AS (
        setweight(to_tsvector('english', heading), 'A') || setweight(to_tsvector('english', body), 'B')
    ) STORED
);
CREATE INDEX policy_passages_search ON policy_passages USING GIN (search);

-- Work the agent hands to people, and mail it would send. Both are written by tools
-- behind the gate and carry the gate's idempotency key.
CREATE TABLE invoice_exceptions (
    exception_id    BIGSERIAL PRIMARY KEY,
    invoice_id      TEXT NOT NULL REFERENCES invoices (invoice_id),
    codes           TEXT[] NOT NULL,
    detail          TEXT NOT NULL,
    thread_id       TEXT,
    idempotency_key TEXT NOT NULL UNIQUE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE email_outbox (
    outbox_id       BIGSERIAL PRIMARY KEY,
    vendor_id       TEXT NOT NULL REFERENCES vendors (vendor_id),
    to_address      TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'failed')),
    thread_id       TEXT,
    idempotency_key TEXT NOT NULL UNIQUE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE vendor_bank_changes (
    change_id       BIGSERIAL PRIMARY KEY,
    vendor_id       TEXT NOT NULL REFERENCES vendors (vendor_id),
    old_account     TEXT NOT NULL,
    new_account     TEXT NOT NULL,
    reason          TEXT NOT NULL,
    approved_by     JSONB NOT NULL DEFAULT '[]',
    thread_id       TEXT,
    idempotency_key TEXT NOT NULL UNIQUE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
