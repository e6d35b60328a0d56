-- Accepted messages (sending application|facility + MSH-10): a resend is ACKed again, changes nothing.
-- 0.4.0 data dirs already have this table in state.sqlite (`at` in epoch seconds): kept as it is.
CREATE TABLE IF NOT EXISTS accepted (sender TEXT NOT NULL, control_id TEXT NOT NULL, at BIGINT NOT NULL,
  PRIMARY KEY (sender, control_id));
