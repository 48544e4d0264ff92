-- Screening: per-user counters in minute buckets, countries each user has called, the
-- operator's allow/block lists, users' own allow-lists, and every screening decision
-- (until call detail records carry them).
CREATE TABLE IF NOT EXISTS screening_usage (
    user          TEXT    NOT NULL,
    minute        INTEGER NOT NULL,
    calls         INTEGER NOT NULL DEFAULT 0,
    international INTEGER NOT NULL DEFAULT 0,
    seconds       INTEGER NOT NULL DEFAULT 0,
    premium_short INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, minute)
);
CREATE TABLE IF NOT EXISTS screening_countries (
    user       TEXT    NOT NULL,
    country    TEXT    NOT NULL,
    first_seen INTEGER NOT NULL,
    PRIMARY KEY (user, country)
);
CREATE TABLE IF NOT EXISTS screening_lists (
    list     TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    value    TEXT    NOT NULL,
    note     TEXT    NOT NULL DEFAULT '',
    added_at INTEGER NOT NULL,
    PRIMARY KEY (list, kind, value)
);
CREATE TABLE IF NOT EXISTS screening_user_allow (
    user     TEXT    NOT NULL,
    value    TEXT    NOT NULL,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (user, value)
);
CREATE TABLE IF NOT EXISTS screening_decisions (
    call_id   TEXT    NOT NULL,
    at        INTEGER NOT NULL,
    user      TEXT    NOT NULL,
    callee    TEXT    NOT NULL,
    source    TEXT    NOT NULL,
    profile   TEXT    NOT NULL,
    decision  TEXT    NOT NULL,
    verdict   TEXT,
    score     INTEGER NOT NULL,
    reason    TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS screening_decisions_at ON screening_decisions (at);
