-- The newest snapshot of each agent's workspace in object storage (clawpen-storage): when it
-- was taken and what it holds. Object storage is the truth (a snapshot is its manifest); this
-- row says when the next backup is due and that a node without the workspace must restore it.
CREATE TABLE workspace_backups (
    agent_id    TEXT PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    snapshot_id TEXT NOT NULL,
    taken_at    INTEGER NOT NULL,
    files       INTEGER NOT NULL,
    bytes       INTEGER NOT NULL
);
CREATE INDEX workspace_backups_tenant ON workspace_backups (tenant_id);
