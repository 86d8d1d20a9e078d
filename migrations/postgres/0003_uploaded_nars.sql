-- PostgreSQL twin of migrations/sqlite/0003_uploaded_nars.sql.
-- NARs received by `PUT /nar/…` whose narinfo has not arrived yet (stored, and in use until
-- their narinfo is published or the upload expires), under the URL they were verified against.
CREATE TABLE uploaded_nars (
    url_key VARCHAR(64) PRIMARY KEY NOT NULL,
    nar_hash VARCHAR(64) NOT NULL,
    nar_size BIGINT NOT NULL,
    file_size BIGINT NOT NULL,
    uploaded_at BIGINT NOT NULL
);
CREATE INDEX uploaded_nars_nar_hash ON uploaded_nars (nar_hash);
CREATE INDEX uploaded_nars_uploaded_at ON uploaded_nars (uploaded_at);
