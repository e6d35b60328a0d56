-- The Défi Santé alert ledger: one row per Communication raised (deterministic id per encounter and
-- kind), the message that raised it (the Encounter's meta.source: sender + MSH-10) and its body.
CREATE TABLE IF NOT EXISTS alert_ledger (communication_id TEXT PRIMARY KEY, raised_by TEXT NOT NULL,
  body TEXT NOT NULL, at BIGINT NOT NULL);
