-- The web console's sign-in (crates/clawpen-server/src/console): a password for a member of
-- kind `web` (whose external_id is the email it signs in with), and the console's sessions.

-- The argon2id hash of a member's password, as a PHC string (salt and parameters in it).
CREATE TABLE web_logins (
    member_id     TEXT PRIMARY KEY REFERENCES members(id) ON DELETE CASCADE,
    password_hash TEXT NOT NULL,
    updated_at    INTEGER NOT NULL
);

-- A signed-in browser: only the SHA-256 of its cookie's token is kept. A member's session
-- names the member and its tenant; the operator's (admin) names neither. `csrf` is the token
-- every form of the session carries. Deleting the member (or signing out everywhere) ends them.
CREATE TABLE web_sessions (
    token_hash TEXT PRIMARY KEY,
    member_id  TEXT REFERENCES members(id) ON DELETE CASCADE,
    tenant_id  TEXT REFERENCES tenants(id) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX web_sessions_member ON web_sessions (member_id);
CREATE INDEX web_sessions_expires ON web_sessions (expires_at);

-- The console's usage chart sums a month of a tenant's calls by day: an index that holds the
-- cost answers it without reading the rows.
CREATE INDEX calls_tenant_cost ON calls (tenant_id, at, cost);
