-- A tenant without activity past its plan's inactive_warn_days: when it was warned and when its
-- agents' data was archived to storage (and removed from nodes). The row goes when the tenant
-- is active again, and with the tenant.
CREATE TABLE tenant_inactivity (
    tenant_id   TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    warned_at   BIGINT NOT NULL,
    archived_at BIGINT
);
