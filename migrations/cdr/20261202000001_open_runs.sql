-- The records still open, by run: what crash recovery and a cluster's survivors look up
-- (a partial index, small however many closed records the table holds).
CREATE INDEX IF NOT EXISTS cdrs_open ON cdrs (instance, boot) WHERE end_reason IS NULL;
