-- Narinfos we know about, one row per store path hash. `nar_key` is the file name of the NAR we
-- serve for it ("<nixbase32 hash>.nar.<ext>"); the NAR itself may not be downloaded yet, in
-- which case `upstream_url` + `upstream_nar_url` say where to fetch it from.
-- Types are kept portable (VARCHAR/BIGINT/TEXT) so the PostgreSQL and MySQL schemas match.
CREATE TABLE narinfos (
    hash VARCHAR(32) PRIMARY KEY NOT NULL,
    store_path VARCHAR(255) NOT NULL,
    nar_key VARCHAR(64) NOT NULL,
    file_hash VARCHAR(64),
    file_size BIGINT,
    nar_hash VARCHAR(64) NOT NULL,
    nar_size BIGINT NOT NULL,
    refs TEXT NOT NULL,
    deriver VARCHAR(255),
    sigs TEXT NOT NULL,
    ca TEXT,
    upstream_url TEXT,
    upstream_nar_url TEXT,
    created_at BIGINT NOT NULL,
    last_accessed_at BIGINT NOT NULL
);
CREATE INDEX narinfos_nar_key ON narinfos (nar_key);
CREATE INDEX narinfos_last_accessed_at ON narinfos (last_accessed_at);

-- NAR files present in storage (a row is written only after the bytes were verified and stored).
CREATE TABLE nar_files (
    nar_key VARCHAR(64) PRIMARY KEY NOT NULL,
    file_size BIGINT NOT NULL,
    nar_hash VARCHAR(64) NOT NULL,
    nar_size BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_accessed_at BIGINT NOT NULL
);
CREATE INDEX nar_files_last_accessed_at ON nar_files (last_accessed_at);
