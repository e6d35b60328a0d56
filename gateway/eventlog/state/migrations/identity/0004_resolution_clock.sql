-- The resolution clock: every resolution takes the next number inside its transaction (under the
-- identity lock), so the numbers follow the order in which resolutions committed, across every
-- instance. Published copies carry it (MapResult.resolved, the fhir envelope's "resolved"): a store
-- keeps, per resource, the copy of the latest resolution, whatever order the records arrive in.
CREATE TABLE IF NOT EXISTS clock (name TEXT PRIMARY KEY, n BIGINT NOT NULL);
INSERT INTO clock(name, n) VALUES ('resolved', 0) ON CONFLICT DO NOTHING;
