-- Build logs and realisations count in the stored bytes and are evicted in least-recently-used
-- order with the narinfos: each records its size in bytes and when it was last served.
ALTER TABLE build_logs ADD COLUMN stored_size BIGINT NOT NULL DEFAULT 0;
ALTER TABLE build_logs ADD COLUMN last_accessed_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE realisations ADD COLUMN stored_size BIGINT NOT NULL DEFAULT 0;
ALTER TABLE realisations ADD COLUMN last_accessed_at BIGINT NOT NULL DEFAULT 0;
UPDATE build_logs SET stored_size = LENGTH(CAST(content AS BLOB)), last_accessed_at = created_at;
UPDATE realisations SET stored_size = LENGTH(CAST(content AS BLOB)), last_accessed_at = created_at;
CREATE INDEX build_logs_last_accessed_at ON build_logs (last_accessed_at);
CREATE INDEX realisations_last_accessed_at ON realisations (last_accessed_at);
