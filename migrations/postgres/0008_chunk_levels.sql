-- The zstd level each chunk's stored frame was compressed at (NULL: stored before this was
-- recorded). Writers of one chunk may compress at different levels (eager and lazy chunking,
-- `migrate-nar-to-chunks` beside a server, replicas configured apart); a writer that finds the
-- chunk's row at another level writes its frame at that level, so every writer of a chunk
-- writes the same bytes and the object always has the size its row records.
ALTER TABLE chunks ADD COLUMN zstd_level BIGINT;
