-- Runs an agent starts on its own: a cron expression in the tenant's time zone, or an interval,
-- with the message the run starts from and the channel its reply goes to. `next_due_at` is the
-- next due time (Unix ms); `not_before` holds a run back after failures; a paused schedule says
-- why, and until when when it resumes by itself (a credit cap that lifts).
CREATE TABLE schedules (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    agent_id      TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    cron          TEXT,
    every_secs    BIGINT,
    tz            TEXT NOT NULL,
    message       TEXT NOT NULL,
    channel       TEXT NOT NULL,
    target        TEXT,
    created_at    BIGINT NOT NULL,
    next_due_at   BIGINT NOT NULL,
    not_before    BIGINT NOT NULL DEFAULT 0,
    failures      BIGINT NOT NULL DEFAULT 0,
    paused_reason TEXT,
    paused_until  BIGINT,
    UNIQUE (tenant_id, name)
);
CREATE INDEX schedules_due ON schedules (next_due_at);
CREATE INDEX schedules_agent ON schedules (agent_id);

-- One row per run of a schedule, written (with the due time it serves) in the same transaction
-- that moves the schedule past that due time, before the run starts: a crash can never make a
-- due time run twice. A run still `running` when the server starts again was cut short by a
-- crash and is marked `interrupted`, not run again. `first_token_at`: when the reply's first
-- piece arrived.
CREATE TABLE schedule_runs (
    schedule_id TEXT NOT NULL REFERENCES schedules(id) ON DELETE CASCADE,
    due_at      BIGINT NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    run_id      TEXT,
    started_at  BIGINT NOT NULL,
    first_token_at BIGINT,
    finished_at BIGINT,
    status      TEXT NOT NULL,
    detail      TEXT,
    PRIMARY KEY (schedule_id, due_at)
);
CREATE INDEX schedule_runs_status ON schedule_runs (status);
