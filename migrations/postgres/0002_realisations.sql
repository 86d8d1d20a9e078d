-- PostgreSQL twin of migrations/sqlite/0002_realisations.sql.
-- Realisations of content-addressed derivation outputs (`/realisations/<id>.doi`) and build
-- traces (`/build-trace-v2/<drv name>/<output>`): small JSON documents kept as uploaded.
CREATE TABLE realisations (
    id VARCHAR(255) PRIMARY KEY NOT NULL,
    content TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
