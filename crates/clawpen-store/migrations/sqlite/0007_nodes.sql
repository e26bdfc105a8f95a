-- Which node (Docker Engine) each agent's sandbox is placed on; NULL: not placed yet.
ALTER TABLE agents ADD COLUMN node TEXT;
-- Nodes being drained: no new sandboxes go there, and their agents are moved away.
CREATE TABLE node_drains (
    name       TEXT PRIMARY KEY,
    started_at INTEGER NOT NULL
);
