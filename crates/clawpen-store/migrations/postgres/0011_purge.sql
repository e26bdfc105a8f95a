-- The audit log stays append-only, with one exception: the lines of a tenant that is being
-- purged (its own request to leave, or the operator's `clawpen tenant delete --purge`), which
-- the purge names in `purging` inside its own transaction and removes again before it commits.
CREATE TABLE purging (
    tenant_id TEXT PRIMARY KEY
);
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.tenant_id IS NOT NULL AND EXISTS (SELECT 1 FROM purging WHERE tenant_id = OLD.tenant_id) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$ LANGUAGE plpgsql;
