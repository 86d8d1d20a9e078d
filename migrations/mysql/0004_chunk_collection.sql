-- Chunk collection in two steps that other processes can see. The collector first claims a
-- chunk (`collecting` = 1, only while it is still unreferenced past the grace period), then
-- deletes its object, then its row. An ingest holds every chunk it is about to write or rely
-- on (a row with a fresh `unreferenced_since`) and waits while a chunk is claimed, so the
-- collector never deletes an object that an ingest is about to name in a chunk list.
ALTER TABLE chunks ADD COLUMN collecting BIGINT NOT NULL DEFAULT 0;
