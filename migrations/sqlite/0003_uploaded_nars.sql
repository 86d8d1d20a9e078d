-- NARs received by `PUT /nar/…` whose narinfo has not arrived yet. The NAR itself is already
-- stored (it has its `nars` row); this row names the URL it was uploaded under, which is
-- verified: the uploaded file's bytes hash to the URL's FileHash. Kept in the database rather
-- than in one process so the narinfo may reach any replica. A NAR with a row here is in use:
-- no clean-up removes it until the narinfo is published or the upload expires.
CREATE TABLE uploaded_nars (
    url_key VARCHAR(64) PRIMARY KEY NOT NULL,
    nar_hash VARCHAR(64) NOT NULL,
    nar_size BIGINT NOT NULL,
    file_size BIGINT NOT NULL,
    uploaded_at BIGINT NOT NULL
);
CREATE INDEX uploaded_nars_nar_hash ON uploaded_nars (nar_hash);
CREATE INDEX uploaded_nars_uploaded_at ON uploaded_nars (uploaded_at);
