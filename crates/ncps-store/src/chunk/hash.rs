//! Where chunks live in object storage.

use ncps_nix::ChunkHash;

/// Directory under which every chunk is stored, so chunks can be listed and swept without the
/// database.
pub(crate) const CHUNK_DIR: &str = "chunks";

/// Suffix of a chunk's object name: its content is one zstd frame.
const CHUNK_SUFFIX: &str = ".zst";

/// The object key the chunk is stored under: `chunks/<2 hex>/<64 hex>.zst`. The two-digit
/// fan-out keeps directories small on a local file system.
pub fn chunk_storage_key(hash: &ChunkHash) -> String {
    let hex = hash.to_string();
    format!("{CHUNK_DIR}/{}/{hex}{CHUNK_SUFFIX}", &hex[..2])
}

/// Parses a key made by [`chunk_storage_key`]; `None` for anything else, so a
/// sweep skips foreign or misplaced files instead of deleting them.
pub fn chunk_from_storage_key(key: &str) -> Option<ChunkHash> {
    let rest = key.strip_prefix(CHUNK_DIR)?.strip_prefix('/')?;
    let (dir, file) = rest.split_once('/')?;
    let hash: ChunkHash = file.strip_suffix(CHUNK_SUFFIX)?.parse().ok()?;
    (dir.len() == 2 && file.starts_with(dir)).then_some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_key_round_trip_and_foreign_keys() {
        let h = ChunkHash::digest(b"chunk");
        let hex = h.to_string();
        let key = chunk_storage_key(&h);
        assert_eq!(key, format!("chunks/{}/{hex}.zst", &hex[..2]));
        assert_eq!(chunk_from_storage_key(&key), Some(h));
        for foreign in [
            format!("chunks/{hex}.zst"),
            format!("chunks/00/{hex}.zst")
                .replace("/00/", if &hex[..2] == "00" { "/01/" } else { "/00/" }),
            format!("chunks/{}/{hex}", &hex[..2]),
            format!("chunks/{}/{hex}.zst.tmp", &hex[..2]),
            format!("nar/{}/{hex}.zst", &hex[..2]),
            "chunks/ab/README".to_string(),
        ] {
            assert_eq!(chunk_from_storage_key(&foreign), None, "{foreign}");
        }
    }
}
