-- MySQL/MariaDB twin of migrations/sqlite/0001_initial.sql: the same tables, columns, keys and
-- indexes. Differences in spelling only: unbounded text is LONGTEXT and bytes LONGBLOB (MySQL's
-- TEXT and BLOB stop at 64 KiB; SQLite's and PostgreSQL's have no such limit, and a narinfo's
-- References can be longer), and every table is InnoDB in utf8mb4 with the binary collation,
-- so keys compare byte for byte as on the other engines (the default collations ignore case
-- and trailing spaces). Keys stay VARCHAR(<=255): 1020 bytes in utf8mb4, within InnoDB's
-- 3072-byte index limit. Keep the three dialects' files in step.

-- Narinfos we know about, one row per store path hash. `url_key` is the file name of the NAR
-- URL we handed out for it ("<nixbase32 hash>.nar[.ext]"). The NAR itself may not be stored
-- yet: `upstream_*` say where to fetch it and what its file must hash to.
CREATE TABLE narinfos (
    hash VARCHAR(32) PRIMARY KEY NOT NULL,
    store_path VARCHAR(255) NOT NULL,
    url_key VARCHAR(64) NOT NULL,
    nar_hash VARCHAR(64) NOT NULL,
    nar_size BIGINT NOT NULL,
    refs LONGTEXT NOT NULL,
    deriver VARCHAR(255),
    sigs LONGTEXT NOT NULL,
    ca LONGTEXT,
    upstream_url LONGTEXT,
    upstream_nar_url LONGTEXT,
    upstream_compression VARCHAR(16),
    upstream_file_hash VARCHAR(64),
    upstream_file_size BIGINT,
    created_at BIGINT NOT NULL,
    last_accessed_at BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX narinfos_nar_hash ON narinfos (nar_hash);
CREATE INDEX narinfos_last_accessed_at ON narinfos (last_accessed_at);

-- Every NAR URL ever handed out, and the NAR (by NarHash) it names. Clients keep narinfos for
-- 30 days, so a URL must keep resolving whatever storage form the NAR has moved to since.
CREATE TABLE nar_urls (
    url_key VARCHAR(64) PRIMARY KEY NOT NULL,
    nar_hash VARCHAR(64) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
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
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
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
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX chunks_unreferenced_since ON chunks (unreferenced_since);

-- The ordered chunk list of each chunked NAR.
CREATE TABLE nar_chunks (
    nar_hash VARCHAR(64) NOT NULL,
    seq BIGINT NOT NULL,
    chunk_hash VARCHAR(64) NOT NULL,
    PRIMARY KEY (nar_hash, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX nar_chunks_chunk_hash ON nar_chunks (chunk_hash);

-- Settings that must not change silently between runs (e.g. the chunking parameters).
CREATE TABLE settings (
    name VARCHAR(64) PRIMARY KEY NOT NULL,
    value LONGTEXT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Build logs uploaded with `nix store copy-log --to` (PUT /log/<drv>), served by GET /log/<drv>.
CREATE TABLE build_logs (
    drv VARCHAR(255) PRIMARY KEY NOT NULL,
    content LONGBLOB NOT NULL,
    created_at BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Store paths an operator pinned (`ncps pin`): eviction never removes a pinned path or anything
-- in its reference closure. A pin may name a path not cached yet; it protects it once fetched.
CREATE TABLE pins (
    hash VARCHAR(32) PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
