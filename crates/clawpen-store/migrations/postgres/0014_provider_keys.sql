-- A tenant's own key for a model provider (bring your own key). The key itself is sealed in
-- `secrets` (purpose `provider_key`, id the provider); this row says what may be shown of it
-- (its last four characters) and whether the provider still takes it.
CREATE TABLE provider_keys (
    tenant_id  TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    provider   TEXT NOT NULL,
    last4      TEXT NOT NULL,
    status     TEXT NOT NULL,
    detail     TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, provider)
);
