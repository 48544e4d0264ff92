-- The call's recording file, when it was recorded.
ALTER TABLE cdrs ADD COLUMN recording TEXT;
