-- Running totals of what the cache holds, so stored bytes and counts are read without summing
-- every NAR and chunk (a scrape, the status page, an eviction run cost the same on a cache of a
-- million paths as on a new one). Triggers append one row of changes per changed row (never an
-- update of a shared row, which concurrent writers would queue or deadlock on); the totals are
-- the sum of the rows, and ncps folds the rows into one now and then. The first row holds what
-- the tables held when this migration ran.

CREATE TABLE store_deltas (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    narinfos BIGINT NOT NULL DEFAULT 0,
    nars BIGINT NOT NULL DEFAULT 0,
    whole_bytes BIGINT NOT NULL DEFAULT 0,
    chunks BIGINT NOT NULL DEFAULT 0,
    chunk_refs BIGINT NOT NULL DEFAULT 0,
    chunk_plain BIGINT NOT NULL DEFAULT 0,
    chunk_stored BIGINT NOT NULL DEFAULT 0,
    chunk_described BIGINT NOT NULL DEFAULT 0,
    document_bytes BIGINT NOT NULL DEFAULT 0
);

INSERT INTO store_deltas (narinfos, nars, whole_bytes, chunks, chunk_refs, chunk_plain, chunk_stored, chunk_described, document_bytes)
SELECT
    (SELECT COUNT(*) FROM narinfos),
    (SELECT COUNT(*) FROM nars),
    (SELECT COALESCE(SUM(whole_size), 0) FROM nars),
    (SELECT COUNT(*) FROM chunks WHERE ref_count > 0),
    (SELECT COALESCE(SUM(ref_count), 0) FROM chunks WHERE ref_count > 0),
    (SELECT COALESCE(SUM(plain_size), 0) FROM chunks WHERE ref_count > 0),
    (SELECT COALESCE(SUM(stored_size), 0) FROM chunks WHERE ref_count > 0),
    (SELECT COALESCE(SUM(ref_count * plain_size), 0) FROM chunks WHERE ref_count > 0),
    (SELECT COALESCE(SUM(stored_size), 0) FROM build_logs)
        + (SELECT COALESCE(SUM(stored_size), 0) FROM realisations);

CREATE TRIGGER narinfos_totals_insert AFTER INSERT ON narinfos
BEGIN
    INSERT INTO store_deltas (narinfos) VALUES (1);
END;

CREATE TRIGGER narinfos_totals_delete AFTER DELETE ON narinfos
BEGIN
    INSERT INTO store_deltas (narinfos) VALUES (-1);
END;

CREATE TRIGGER nars_totals_insert AFTER INSERT ON nars
BEGIN
    INSERT INTO store_deltas (nars, whole_bytes) VALUES (1, COALESCE(NEW.whole_size, 0));
END;

CREATE TRIGGER nars_totals_delete AFTER DELETE ON nars
BEGIN
    INSERT INTO store_deltas (nars, whole_bytes) VALUES (-1, -COALESCE(OLD.whole_size, 0));
END;

CREATE TRIGGER nars_totals_update AFTER UPDATE OF whole_size ON nars
WHEN COALESCE(NEW.whole_size, 0) <> COALESCE(OLD.whole_size, 0)
BEGIN
    INSERT INTO store_deltas (whole_bytes) VALUES (COALESCE(NEW.whole_size, 0) - COALESCE(OLD.whole_size, 0));
END;

CREATE TRIGGER chunks_totals_insert AFTER INSERT ON chunks
WHEN NEW.ref_count > 0
BEGIN
    INSERT INTO store_deltas (chunks, chunk_refs, chunk_plain, chunk_stored, chunk_described) VALUES (CASE WHEN NEW.ref_count > 0 THEN 1 ELSE 0 END, CASE WHEN NEW.ref_count > 0 THEN NEW.ref_count ELSE 0 END, CASE WHEN NEW.ref_count > 0 THEN NEW.plain_size ELSE 0 END, CASE WHEN NEW.ref_count > 0 THEN NEW.stored_size ELSE 0 END, CASE WHEN NEW.ref_count > 0 THEN NEW.ref_count * NEW.plain_size ELSE 0 END);
END;

CREATE TRIGGER chunks_totals_delete AFTER DELETE ON chunks
WHEN OLD.ref_count > 0
BEGIN
    INSERT INTO store_deltas (chunks, chunk_refs, chunk_plain, chunk_stored, chunk_described) VALUES (-(CASE WHEN OLD.ref_count > 0 THEN 1 ELSE 0 END), -(CASE WHEN OLD.ref_count > 0 THEN OLD.ref_count ELSE 0 END), -(CASE WHEN OLD.ref_count > 0 THEN OLD.plain_size ELSE 0 END), -(CASE WHEN OLD.ref_count > 0 THEN OLD.stored_size ELSE 0 END), -(CASE WHEN OLD.ref_count > 0 THEN OLD.ref_count * OLD.plain_size ELSE 0 END));
END;

CREATE TRIGGER chunks_totals_update AFTER UPDATE OF ref_count, plain_size, stored_size ON chunks
WHEN NEW.ref_count <> OLD.ref_count OR NEW.plain_size <> OLD.plain_size OR NEW.stored_size <> OLD.stored_size
BEGIN
    INSERT INTO store_deltas (chunks, chunk_refs, chunk_plain, chunk_stored, chunk_described) VALUES (CASE WHEN NEW.ref_count > 0 THEN 1 ELSE 0 END - (CASE WHEN OLD.ref_count > 0 THEN 1 ELSE 0 END), CASE WHEN NEW.ref_count > 0 THEN NEW.ref_count ELSE 0 END - (CASE WHEN OLD.ref_count > 0 THEN OLD.ref_count ELSE 0 END), CASE WHEN NEW.ref_count > 0 THEN NEW.plain_size ELSE 0 END - (CASE WHEN OLD.ref_count > 0 THEN OLD.plain_size ELSE 0 END), CASE WHEN NEW.ref_count > 0 THEN NEW.stored_size ELSE 0 END - (CASE WHEN OLD.ref_count > 0 THEN OLD.stored_size ELSE 0 END), CASE WHEN NEW.ref_count > 0 THEN NEW.ref_count * NEW.plain_size ELSE 0 END - (CASE WHEN OLD.ref_count > 0 THEN OLD.ref_count * OLD.plain_size ELSE 0 END));
END;

CREATE TRIGGER build_logs_totals_insert AFTER INSERT ON build_logs
BEGIN
    INSERT INTO store_deltas (document_bytes) VALUES (NEW.stored_size);
END;

CREATE TRIGGER build_logs_totals_delete AFTER DELETE ON build_logs
BEGIN
    INSERT INTO store_deltas (document_bytes) VALUES (-OLD.stored_size);
END;

CREATE TRIGGER build_logs_totals_update AFTER UPDATE OF stored_size ON build_logs
WHEN NEW.stored_size <> OLD.stored_size
BEGIN
    INSERT INTO store_deltas (document_bytes) VALUES (NEW.stored_size - OLD.stored_size);
END;

CREATE TRIGGER realisations_totals_insert AFTER INSERT ON realisations
BEGIN
    INSERT INTO store_deltas (document_bytes) VALUES (NEW.stored_size);
END;

CREATE TRIGGER realisations_totals_delete AFTER DELETE ON realisations
BEGIN
    INSERT INTO store_deltas (document_bytes) VALUES (-OLD.stored_size);
END;

CREATE TRIGGER realisations_totals_update AFTER UPDATE OF stored_size ON realisations
WHEN NEW.stored_size <> OLD.stored_size
BEGIN
    INSERT INTO store_deltas (document_bytes) VALUES (NEW.stored_size - OLD.stored_size);
END;
