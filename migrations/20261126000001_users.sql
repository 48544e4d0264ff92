-- Users who may authenticate (REGISTER, and INVITE from untrusted sources), kept by
-- `warden user add`: only the digest HA1 values, never a password.
CREATE TABLE IF NOT EXISTS users (
    username   TEXT PRIMARY KEY,
    ha1_md5    TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
