-- Telegram. A tenant's own bot: its token and webhook secret are sealed in `secrets` (purposes
-- `telegram.bot_token` and `telegram.webhook_secret`, record = the bot's id), never here. The id
-- is opaque and is what the webhook URL carries.
CREATE TABLE telegram_bots (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL UNIQUE REFERENCES tenants(id) ON DELETE CASCADE,
    agent_id    TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    -- Telegram's id of the bot (from getMe): one bot serves one tenant.
    bot_user_id BIGINT NOT NULL UNIQUE,
    username    TEXT NOT NULL,
    mode        TEXT NOT NULL,
    access      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Pairing codes, stored as SHA-256 only; single use, expiring.
CREATE TABLE telegram_pairing_codes (
    code_sha256 TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    agent_id    TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    used_by     TEXT
);
CREATE INDEX telegram_pairing_codes_tenant ON telegram_pairing_codes (tenant_id);

-- Which agent a Telegram member (members.kind = 'telegram') talks to through the shared bot.
CREATE TABLE telegram_links (
    member_id  TEXT PRIMARY KEY REFERENCES members(id) ON DELETE CASCADE,
    agent_id   TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    updated_at BIGINT NOT NULL
);

-- Update ids already taken, per bot, so that a retried webhook (or a re-fetched update) is
-- answered once. Pruned after two days (Telegram keeps an update at most one).
CREATE TABLE telegram_updates (
    bot_key     TEXT NOT NULL,
    update_id   BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (bot_key, update_id)
);
CREATE INDEX telegram_updates_received ON telegram_updates (received_at);
