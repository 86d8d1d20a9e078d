//! The signing key: loaded from a file, or generated on first start and kept.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use ncps_nix::SecretKey;
use tracing::{info, warn};

/// Loads the secret key at `path`; when `generate_as` is set and the file does not exist, a new
/// key with that name is generated and written with mode 0600.
pub fn load_or_generate(path: &Path, generate_as: Option<&str>) -> Result<SecretKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = SecretKey::parse(&text)
                .with_context(|| format!("{} is not a Nix secret key", path.display()))?;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                warn!(path = %path.display(), "secret key is readable by other users; chmod 600 it");
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(name) = generate_as else {
                bail!("secret key file {} does not exist", path.display());
            };
            generate(path, name)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read secret key {}", path.display())),
    }
}

fn generate(path: &Path, name: &str) -> Result<SecretKey> {
    let key = SecretKey::generate(name).context("cannot generate a signing key")?;
    write_new(path, &key)?;
    info!(path = %path.display(), public_key = %key.public_key().to_nix_string(), "generated a new signing key");
    Ok(key)
}

/// Keeps the signing key a Go ncps kept in its database (`name:base64`) at `path`, unless a
/// key file is there already: clients go on trusting the same public key. The value is
/// checked before anything is written.
pub fn adopt(path: &Path, go_key: &str) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let key = SecretKey::parse(go_key)
        .context("the Go ncps's database holds a signing key that is not a Nix secret key")?;
    write_new(path, &key)?;
    info!(path = %path.display(), public_key = %key.public_key().to_nix_string(), "kept the Go ncps's signing key");
    Ok(())
}

/// Writes `key` to a new file (mode 0600), never replacing one.
fn write_new(path: &Path, key: &SecretKey) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create secret key file {}", path.display()))?;
    file.write_all(key.to_nix_string().as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret.key");
        assert!(load_or_generate(&path, None).is_err());
        let first = load_or_generate(&path, Some("cache.example")).unwrap();
        assert_eq!(first.name(), "cache.example");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_generate(&path, Some("other-name")).unwrap();
        assert_eq!(again.to_nix_string(), first.to_nix_string());
        std::fs::write(&path, "garbage").unwrap();
        assert!(load_or_generate(&path, Some("x")).is_err());
    }

    #[test]
    fn a_go_key_is_kept_unless_a_key_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let go = SecretKey::generate("go-cache").unwrap().to_nix_string();
        assert!(adopt(&path, "not a key").is_err());
        assert!(!path.exists(), "a bad key was written");
        adopt(&path, &go).unwrap();
        assert_eq!(
            load_or_generate(&path, Some("x")).unwrap().to_nix_string(),
            go
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = SecretKey::generate("other").unwrap().to_nix_string();
        adopt(&path, &other).unwrap();
        assert_eq!(load_or_generate(&path, None).unwrap().to_nix_string(), go);
    }
}
