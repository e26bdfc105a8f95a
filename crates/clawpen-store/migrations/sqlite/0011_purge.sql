-- The audit log stays append-only, with one exception: the lines of a tenant that is being
-- purged (its own request to leave, or the operator's `clawpen tenant delete --purge`), which
-- the purge names in `purging` inside its own transaction and removes again before it commits.
CREATE TABLE purging (
    tenant_id TEXT PRIMARY KEY
);
DROP TRIGGER audit_log_no_delete;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
WHEN OLD.tenant_id IS NULL OR NOT EXISTS (SELECT 1 FROM purging WHERE tenant_id = OLD.tenant_id)
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
