-- The fleet's memory of each agent: how deep it hibernates, when it was last used, and its
-- recent restarts (for the crash-loop guard).
ALTER TABLE agents ADD COLUMN hibernation TEXT NOT NULL DEFAULT 'awake';
ALTER TABLE agents ADD COLUMN last_active_at INTEGER;
-- Milliseconds since the epoch of the restarts inside the guard's window, comma-separated.
ALTER TABLE agents ADD COLUMN restarts TEXT NOT NULL DEFAULT '';
