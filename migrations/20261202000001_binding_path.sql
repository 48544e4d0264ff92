-- The Path (RFC 3327) a REGISTER came with: requests to the contact go along it. One URI
-- per line, in order; empty when the phone registered directly.
ALTER TABLE bindings ADD COLUMN path TEXT NOT NULL DEFAULT '';
