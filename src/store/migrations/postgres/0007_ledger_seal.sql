-- Encrypted ledger payloads and their retention (src/store/sealed.rs, `ledger purge`).
-- `payload_key`: the fingerprint of the AES-256-GCM key that sealed the payload (NULL for
-- payloads stored before this migration: gzip only). `purged`: when the retention period
-- ended and the payload was emptied (zero bytes; the row and its other columns are kept).
-- The other database's migration of the same number is the same text.

ALTER TABLE submission ADD COLUMN payload_key TEXT;
ALTER TABLE submission ADD COLUMN purged TEXT;
