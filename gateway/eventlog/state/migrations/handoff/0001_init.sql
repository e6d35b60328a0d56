-- The intake's mapping results, keyed by sender|MSH-10, taken by the mapping worker (0.4.0 handoff.sqlite shape).
CREATE TABLE IF NOT EXISTS handoff (key TEXT PRIMARY KEY, body TEXT NOT NULL, at BIGINT NOT NULL);
