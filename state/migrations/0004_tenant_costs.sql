-- Estimated model spend per tenant per UTC day, shared by every process: the daily cost
-- cap is enforced against this row (state/costs.py), and each node's model spend is added
-- to it as the node finishes. `runs` counts runs admitted that day, `refused_runs` those
-- refused up front because the cap could not cover their budget.
CREATE TABLE tenant_daily_costs (
    tenant       TEXT NOT NULL,
    day          DATE NOT NULL,
    cost_usd     NUMERIC(16, 8) NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    model_calls  INTEGER NOT NULL DEFAULT 0 CHECK (model_calls >= 0),
    runs         INTEGER NOT NULL DEFAULT 0 CHECK (runs >= 0),
    refused_runs INTEGER NOT NULL DEFAULT 0 CHECK (refused_runs >= 0),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, day)
);
