-- The identity index (gateway/eventlog/state/identity.py). The tables of a 0.4.0 identity.sqlite:
-- IF NOT EXISTS keeps an existing data dir's tables and rows. Epoch-ms columns are BIGINT.
CREATE TABLE IF NOT EXISTS person (id TEXT PRIMARY KEY, key TEXT NOT NULL, nam TEXT, survivor TEXT);
CREATE INDEX IF NOT EXISTS person_survivor ON person(survivor);
CREATE TABLE IF NOT EXISTS ident (person TEXT NOT NULL, key TEXT NOT NULL, is_key INTEGER NOT NULL,
  body TEXT NOT NULL, PRIMARY KEY (person, key));
CREATE UNIQUE INDEX IF NOT EXISTS ident_key ON ident(key) WHERE is_key = 1;
CREATE TABLE IF NOT EXISTS resource (rtype TEXT NOT NULL, id TEXT NOT NULL, person TEXT NOT NULL,
  event_ms BIGINT NOT NULL, body TEXT NOT NULL, times TEXT, PRIMARY KEY (rtype, id));
CREATE INDEX IF NOT EXISTS resource_person ON resource(person, rtype);
CREATE TABLE IF NOT EXISTS cluster (person TEXT PRIMARY KEY, digest TEXT NOT NULL, nam INTEGER NOT NULL,
  flagged INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS cluster_nam ON cluster(digest, nam);
CREATE INDEX IF NOT EXISTS cluster_flagged ON cluster(digest, flagged);
CREATE TABLE IF NOT EXISTS dup (id TEXT PRIMARY KEY, a TEXT NOT NULL, b TEXT NOT NULL, active INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS dup_b ON dup(b);
CREATE TABLE IF NOT EXISTS journal (message TEXT NOT NULL, rtype TEXT NOT NULL, id TEXT NOT NULL,
  PRIMARY KEY (message, rtype, id));
CREATE TABLE IF NOT EXISTS provenance (id TEXT PRIMARY KEY, refs TEXT NOT NULL);
