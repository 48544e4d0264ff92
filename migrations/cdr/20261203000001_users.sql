-- A cluster's users (`warden user add` with [cluster]): kept in the database every node
-- shares, so a user added once may register and call through any node. Only HA1 values.
CREATE TABLE IF NOT EXISTS users (
    username   TEXT PRIMARY KEY,
    ha1_md5    TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
