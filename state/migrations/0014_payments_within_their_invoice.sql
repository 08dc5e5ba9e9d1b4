-- A payment pays its own invoice: the invoice's vendor, in the invoice's currency, and never
-- more than the invoice's total. schedule_payment checks all three before it inserts
-- (tools/ap.py), but a world file (`payables seed`, eval scenarios) inserts payments
-- directly, and nothing in the database held them: a seeded payment of 2,000 on an invoice
-- of 1,000, or in EUR on a USD invoice, loaded, and the agent then read it as the
-- invoice's payment. These triggers hold the rule for every writer, from either side.
-- The invoice row is read FOR SHARE, so a concurrent change of its total, currency or
-- vendor waits for the payment's transaction (and then sees the payment).
CREATE FUNCTION payments_within_their_invoice() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    inv RECORD;
BEGIN
    SELECT i.vendor_id, i.currency, i.total INTO inv FROM invoices AS i
        WHERE i.invoice_id = NEW.invoice_id FOR SHARE;
    IF NOT FOUND THEN
        RETURN NEW;  -- the foreign key refuses it, with its own message
    END IF;
    IF NEW.vendor_id <> inv.vendor_id THEN
        RAISE EXCEPTION 'payment % is to vendor %, but invoice % is from vendor %',
            NEW.payment_id, NEW.vendor_id, NEW.invoice_id, inv.vendor_id
            USING ERRCODE = 'check_violation',
                  HINT = 'A payment goes to the vendor of the invoice it pays.';
    END IF;
    IF NEW.currency <> inv.currency THEN
        RAISE EXCEPTION 'payment % is in %, but invoice % is in %',
            NEW.payment_id, NEW.currency, NEW.invoice_id, inv.currency
            USING ERRCODE = 'check_violation',
                  HINT = 'A payment is in the currency of the invoice it pays.';
    END IF;
    IF NEW.amount > inv.total THEN
        RAISE EXCEPTION 'payment % of % % is more than the total % of invoice %',
            NEW.payment_id, NEW.amount, NEW.currency, inv.total, NEW.invoice_id
            USING ERRCODE = 'check_violation',
                  HINT = 'A payment never exceeds the total of the invoice it pays.';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER payments_within_their_invoice
    BEFORE INSERT OR UPDATE OF invoice_id, vendor_id, currency, amount ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_within_their_invoice();

CREATE FUNCTION invoices_keep_their_payments() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pay RECORD;
BEGIN
    SELECT p.payment_id, p.vendor_id, p.currency, p.amount INTO pay FROM payments AS p
        WHERE p.invoice_id = NEW.invoice_id
          AND (p.vendor_id <> NEW.vendor_id OR p.currency <> NEW.currency
               OR p.amount > NEW.total)
        LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'invoice % (% %, vendor %) would no longer cover its payment % (% %, vendor %)',
            NEW.invoice_id, NEW.total, NEW.currency, NEW.vendor_id,
            pay.payment_id, pay.amount, pay.currency, pay.vendor_id
            USING ERRCODE = 'check_violation',
                  HINT = 'An invoice with payments keeps its vendor and currency, and a total of at least each payment.';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER invoices_keep_their_payments
    BEFORE UPDATE OF vendor_id, currency, total ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_keep_their_payments();
