-- Estimated model spend per tenant per UTC day, shared by every process: the daily cost
-- cap is enforced against this row, and each node's model spend is added to it.
CREATE TABLE tenant_daily_costs (
    tenant      TEXT NOT NULL,
    day         DATE NOT NULL,
    cost_usd    NUMERIC(14, 6) NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    model_calls INTEGER NOT NULL DEFAULT 0,
    runs        INTEGER NOT NULL DEFAULT 0,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, day)
);
