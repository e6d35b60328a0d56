-- A cluster member's join order, explicit (it was SQLite's rowid): kept when the member's row is
-- updated, max + 1 for a newcomer (what a rowid did). The indexes end with it, so "the earliest
-- member" stays an index probe (SQLite's indexes carried the rowid implicitly).
ALTER TABLE cluster ADD COLUMN seq BIGINT;
DROP INDEX IF EXISTS cluster_nam;
DROP INDEX IF EXISTS cluster_flagged;
CREATE INDEX cluster_nam_seq ON cluster(digest, nam, seq);
CREATE INDEX cluster_flagged_seq ON cluster(digest, flagged, seq);
CREATE INDEX cluster_seq ON cluster(seq);
