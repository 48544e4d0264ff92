-- Screening: the networks (a /24 or /64) each user's calls have come from, for the
-- new-source rule.
CREATE TABLE IF NOT EXISTS screening_sources (
    user       TEXT    NOT NULL,
    network    TEXT    NOT NULL,
    first_seen INTEGER NOT NULL,
    PRIMARY KEY (user, network)
);
