-- Tenant secrets (bot tokens, OAuth tokens), sealed by the vault. The vault binds each sealed
-- value to (tenant_id, purpose, id): a value copied to another row does not open.
CREATE TABLE secrets (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    purpose     TEXT NOT NULL,
    id          TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, purpose, id)
);
