-- Call detail records: one row per call, in SQLite or PostgreSQL alike (this file is run
-- on either, so it keeps to the SQL both speak). Times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS cdrs (
    id               TEXT PRIMARY KEY,
    -- Every update carries a higher rev; an older one arriving late (a journal replayed
    -- twice) changes nothing.
    rev              BIGINT NOT NULL,
    -- The Warden that handled the call (server.instance) and its run (a crash closes the
    -- records of earlier runs only).
    instance         TEXT NOT NULL,
    boot             TEXT NOT NULL,
    a_call_id        TEXT NOT NULL,
    b_call_id        TEXT,
    caller           TEXT NOT NULL,
    callee           TEXT NOT NULL,
    source           TEXT NOT NULL,
    received_ms      BIGINT NOT NULL,
    ringing_ms       BIGINT,
    answered_ms      BIGINT,
    ended_ms         BIGINT,
    duration_ms      BIGINT,
    final_code       BIGINT,
    final_reason     TEXT,
    hangup_side      TEXT,
    end_reason       TEXT,
    rule             TEXT,
    tags             TEXT NOT NULL DEFAULT '',
    screening        TEXT,
    screening_reason TEXT,
    attestation      TEXT,
    a_codec          TEXT,
    b_codec          TEXT,
    -- 1 when Warden transcoded between the legs (an integer: SQLite has no boolean).
    transcoded       BIGINT NOT NULL DEFAULT 0,
    a_packets        BIGINT,
    a_lost           BIGINT,
    a_jitter_us      BIGINT,
    b_packets        BIGINT,
    b_lost           BIGINT,
    b_jitter_us      BIGINT
);

CREATE INDEX IF NOT EXISTS cdrs_received ON cdrs (received_ms);
CREATE INDEX IF NOT EXISTS cdrs_open ON cdrs (instance) WHERE end_reason IS NULL;
