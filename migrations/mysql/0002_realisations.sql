-- MySQL/MariaDB twin of migrations/sqlite/0002_realisations.sql (see 0001 for the spelling).
-- Realisations of content-addressed derivation outputs (`/realisations/<id>.doi`) and build
-- traces (`/build-trace-v2/<drv name>/<output>`): small JSON documents kept as uploaded.
CREATE TABLE realisations (
    id VARCHAR(255) PRIMARY KEY NOT NULL,
    content LONGTEXT NOT NULL,
    created_at BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
