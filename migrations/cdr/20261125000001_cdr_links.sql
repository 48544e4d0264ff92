-- Call features: the conference room a call joined, and the record a call is linked to
-- (a transfer's new call names the call it came from; that one ends as "transferred").
ALTER TABLE cdrs ADD COLUMN conference TEXT;
ALTER TABLE cdrs ADD COLUMN linked_id TEXT;
