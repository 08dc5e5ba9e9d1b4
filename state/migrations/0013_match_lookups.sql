-- The three-way match (tools/matching.py, `_MATCH_INPUTS`) asks two questions of the other
-- invoices, twice per staged invoice: was this vendor invoice number, in any case or
-- grouping, received earlier or accepted already; and how much of each PO line have
-- accepted invoices billed. Both are answered by an index, not by reading every invoice of
-- the vendor or of the table. The key expression is the query's, character for character.
CREATE INDEX invoices_vendor_number_key ON invoices
    (vendor_id, upper(regexp_replace(invoice_number, '[[:space:]._/-]', '', 'g')));
CREATE INDEX invoices_accepted_by_po ON invoices (po_number)
    WHERE status IN ('staged', 'scheduled', 'paid');
