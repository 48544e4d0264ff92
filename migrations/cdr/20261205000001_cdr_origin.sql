-- How a call began: 'sip' (an INVITE came in) or 'api' (POST /calls placed it).
ALTER TABLE cdrs ADD COLUMN origin TEXT NOT NULL DEFAULT 'sip';
