-- One account per tenant: prepaid balance, credit held by in-flight calls, and what was spent
-- this month and today (the month/day columns say which period the counters belong to).
CREATE TABLE accounts (
    tenant_id     TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    balance       INTEGER NOT NULL,
    reserved      INTEGER NOT NULL DEFAULT 0,
    month         TEXT NOT NULL,
    month_spent   INTEGER NOT NULL DEFAULT 0,
    day           TEXT NOT NULL,
    day_spent     INTEGER NOT NULL DEFAULT 0,
    paused_until  INTEGER,
    paused_reason TEXT,
    CHECK (reserved >= 0)
);

-- Two-phase charges: a hold is reserved before a call and settled or voided exactly once.
CREATE TABLE holds (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    amount      INTEGER NOT NULL,
    state       TEXT NOT NULL,
    charged     INTEGER,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    settled_at  INTEGER
);
CREATE INDEX holds_open ON holds (state, expires_at);

-- Every model call, charged or refused.
CREATE TABLE calls (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    at            INTEGER NOT NULL,
    model         TEXT NOT NULL,
    provider      TEXT NOT NULL,
    stream        INTEGER NOT NULL,
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read    INTEGER NOT NULL DEFAULT 0,
    cache_write   INTEGER NOT NULL DEFAULT 0,
    cost          INTEGER NOT NULL DEFAULT 0,
    held          INTEGER NOT NULL DEFAULT 0,
    outcome       TEXT NOT NULL
);
CREATE INDEX calls_tenant ON calls (tenant_id, at);
CREATE INDEX calls_agent ON calls (agent_id, at);

-- Credits added by the operator, for the record.
CREATE TABLE credit_grants (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT NOT NULL,
    at        INTEGER NOT NULL,
    amount    INTEGER NOT NULL,
    reason    TEXT NOT NULL
);

-- Runs (one user message = one run) per agent, for the runs-per-hour cap.
CREATE TABLE runs (
    agent_id TEXT NOT NULL,
    run_id   TEXT NOT NULL,
    at       INTEGER NOT NULL,
    PRIMARY KEY (agent_id, run_id)
);
CREATE INDEX runs_recent ON runs (agent_id, at);
