-- No query orders or filters NARs by their last use (eviction orders narinfos, and a NAR
-- served alone makes its narinfos recent), yet every NAR stored, served or deleted moved an
-- entry in this index: a NAR access-time flush wrote ~50% faster without it at a million NARs.
-- The column stays (it is written, and says when the NAR was last served).
DROP INDEX nars_last_accessed_at ON nars;
