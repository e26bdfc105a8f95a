-- Integrations (the broker, crates/clawpen-broker): tenants' OAuth connections to Google, GitHub
-- and Slack, the tools each tenant enabled, the writes agents proposed, and every tool call.
-- Tokens are not here: a connection's refresh token is sealed in `secrets` (purpose
-- `oauth.refresh_token`, or `oauth.access_token` for a provider whose token never expires;
-- record = the connection's id), and access tokens live only in the server's memory.

-- A connection being made: the SHA-256 of its OAuth state (the state itself is only in the
-- authorize URL), who began it, the scopes asked for, and the PKCE code_verifier sealed by the
-- vault (tenant, `oauth.pkce_verifier`, the state's hash). Taken with one DELETE … RETURNING, so
-- it is spent once whatever races; expired rows are pruned.
CREATE TABLE oauth_states (
    state_hash      TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    member          TEXT NOT NULL,
    provider        TEXT NOT NULL,
    scopes          TEXT NOT NULL,
    verifier_sealed TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL
);
CREATE INDEX oauth_states_expires ON oauth_states (expires_at);

-- One connection per tenant and provider; reconnecting replaces its tokens in place.
-- `scopes` space-separated as granted; `status` is `connected` or `needs_reconnecting`.
CREATE TABLE connections (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    provider   TEXT NOT NULL,
    account    TEXT,
    scopes     TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant_id, provider)
);

-- The tools a tenant chose to give its agents.
CREATE TABLE enabled_tools (
    tenant_id  TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    tool       TEXT NOT NULL,
    enabled_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, tool)
);

-- Writes an agent proposed; performed only when a member approves. `number` counts per tenant
-- (1, 2, 3 …); `payload` is the validated arguments as JSON, `text` exactly what will be written.
-- `state`: pending, approved, rejected or failed.
CREATE TABLE proposals (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    number           BIGINT NOT NULL,
    agent_id         TEXT NOT NULL,
    tool             TEXT NOT NULL,
    provider         TEXT NOT NULL,
    connection_id    TEXT NOT NULL,
    target           TEXT NOT NULL,
    payload          TEXT NOT NULL,
    text             TEXT NOT NULL,
    from_tool_result BIGINT NOT NULL,
    state            TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    decided_at       BIGINT,
    decided_by       TEXT,
    outcome          TEXT,
    UNIQUE (tenant_id, number)
);
CREATE INDEX proposals_state ON proposals (tenant_id, state, number);

-- Every tool call of an agent: never its arguments (a SHA-256 of them, canonical JSON) nor
-- what it returned (only its size).
CREATE TABLE tool_calls (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    agent_id    TEXT NOT NULL,
    tool        TEXT NOT NULL,
    args_digest TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    duration_ms BIGINT NOT NULL,
    bytes       BIGINT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX tool_calls_tenant ON tool_calls (tenant_id, id);
