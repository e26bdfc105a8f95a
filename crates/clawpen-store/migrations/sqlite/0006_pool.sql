-- The warm pool: an agent that claimed a pre-made sandbox runs as that sandbox's uid (from the
-- same never-reused counter as tenant uids). NULL: the agent runs as its tenant's uid.
ALTER TABLE agents ADD COLUMN uid INTEGER;
