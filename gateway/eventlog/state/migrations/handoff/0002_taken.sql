-- A taken result stays a while (a worker killed before its commit: the record is read again, by any
-- instance, and finds it); `taken` is when it was last taken (epoch seconds), NULL while waiting.
ALTER TABLE handoff ADD COLUMN taken BIGINT;
CREATE INDEX IF NOT EXISTS handoff_taken ON handoff(taken);
CREATE INDEX IF NOT EXISTS handoff_at ON handoff(at);
