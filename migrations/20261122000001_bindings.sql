-- Registrar bindings: kept so a restart loses no registration.
CREATE TABLE IF NOT EXISTS bindings (
    aor        TEXT    NOT NULL,
    contact    TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    call_id    TEXT    NOT NULL,
    cseq       INTEGER NOT NULL,
    transport  TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    user_agent TEXT,
    PRIMARY KEY (aor, contact)
);
CREATE INDEX IF NOT EXISTS bindings_expiry ON bindings (expires_at);
