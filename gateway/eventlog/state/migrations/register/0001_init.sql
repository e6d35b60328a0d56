-- The Défi Santé register: the current Flag, CarePlan, CareTeam and Consent of each client (body NULL:
-- deleted), with a stamp that only grows per resource, and the contents already registered (hash), so
-- an older copy arriving later (a store sink) never overwrites newer content.
CREATE TABLE IF NOT EXISTS program_register (rtype TEXT NOT NULL, id TEXT NOT NULL, body TEXT,
  content_hash TEXT NOT NULL, stamp BIGINT NOT NULL, PRIMARY KEY (rtype, id));
CREATE TABLE IF NOT EXISTS program_register_seen (rtype TEXT NOT NULL, id TEXT NOT NULL,
  content_hash TEXT NOT NULL, PRIMARY KEY (rtype, id, content_hash));
