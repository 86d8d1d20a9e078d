-- PostgreSQL twin of migrations/sqlite/0001_initial.sql: the same tables, columns, keys and
-- indexes; only the byte type is spelled BYTEA. Keep the three dialects' files in step.

-- Narinfos we know about, one row per store path hash. `url_key` is the file name of the NAR
-- URL we handed out for it ("<nixbase32 hash>.nar[.ext]"). The NAR itself may not be stored
-- yet: `upstream_*` say where to fetch it and what its file must hash to.
CREATE TABLE narinfos (
    hash VARCHAR(32) PRIMARY KEY NOT NULL,
    store_path VARCHAR(255) NOT NULL,
    url_key VARCHAR(64) NOT NULL,
    nar_hash VARCHAR(64) NOT NULL,
    nar_size BIGINT NOT NULL,
    refs TEXT NOT NULL,
    deriver VARCHAR(255),
    sigs TEXT NOT NULL,
    ca TEXT,
    upstream_url TEXT,
    upstream_nar_url TEXT,
    upstream_compression VARCHAR(16),
    upstream_file_hash VARCHAR(64),
    upstream_file_size BIGINT,
    created_at BIGINT NOT NULL,
    last_accessed_at BIGINT NOT NULL
);
CREATE INDEX narinfos_nar_hash ON narinfos (nar_hash);
CREATE INDEX narinfos_last_accessed_at ON narinfos (last_accessed_at);

-- Every NAR URL ever handed out, and the NAR (by NarHash) it names. Clients keep narinfos for
-- 30 days, so a URL must keep resolving whatever storage form the NAR has moved to since.
CREATE TABLE nar_urls (
    url_key VARCHAR(64) PRIMARY KEY NOT NULL,
    nar_hash VARCHAR(64) NOT NULL
);
CREATE INDEX nar_urls_nar_hash ON nar_urls (nar_hash);

-- NARs that are stored, in one or both forms: a whole file (`whole_key`, verified when written)
-- and/or an ordered list of chunks (`chunk_count` set once the list is complete).
CREATE TABLE nars (
    nar_hash VARCHAR(64) PRIMARY KEY NOT NULL,
    nar_size BIGINT NOT NULL,
    whole_key VARCHAR(64),
    whole_size BIGINT,
    whole_delete_after BIGINT,
    chunk_count BIGINT,
    spliced_hash VARCHAR(64),
    spliced_size BIGINT,
    created_at BIGINT NOT NULL,
    last_accessed_at BIGINT NOT NULL
);
CREATE INDEX nars_last_accessed_at ON nars (last_accessed_at);

-- Chunks, addressed by the BLAKE3 of their plain bytes (hex), stored once however many NARs
-- use them. `ref_count` counts rows of nar_chunks; at zero, `unreferenced_since` starts the
-- grace period after which the garbage collector may delete the chunk.
CREATE TABLE chunks (
    hash VARCHAR(64) PRIMARY KEY NOT NULL,
    plain_size BIGINT NOT NULL,
    stored_size BIGINT NOT NULL,
    ref_count BIGINT NOT NULL,
    unreferenced_since BIGINT
);
CREATE INDEX chunks_unreferenced_since ON chunks (unreferenced_since);

-- The ordered chunk list of each chunked NAR.
CREATE TABLE nar_chunks (
    nar_hash VARCHAR(64) NOT NULL,
    seq BIGINT NOT NULL,
    chunk_hash VARCHAR(64) NOT NULL,
    PRIMARY KEY (nar_hash, seq)
);
CREATE INDEX nar_chunks_chunk_hash ON nar_chunks (chunk_hash);

-- Settings that must not change silently between runs (e.g. the chunking parameters).
CREATE TABLE settings (
    name VARCHAR(64) PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- Build logs uploaded with `nix store copy-log --to` (PUT /log/<drv>), served by GET /log/<drv>.
CREATE TABLE build_logs (
    drv VARCHAR(255) PRIMARY KEY NOT NULL,
    content BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

-- Store paths an operator pinned (`ncps pin`): eviction never removes a pinned path or anything
-- in its reference closure. A pin may name a path not cached yet; it protects it once fetched.
CREATE TABLE pins (
    hash VARCHAR(32) PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL
);
