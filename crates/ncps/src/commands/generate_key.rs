//! `ncps generate-key`: a signing key pair in Nix's format, like
//! `nix-store --generate-binary-cache-key`, for machines without Nix.
//!
//! It does not open the cache (opening one generates a key of its own when none exists).
#![allow(clippy::print_stdout)] // the public key is this command's output

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::cli::GenerateKeyArgs;
use crate::keys;

/// Writes a new secret key (mode 0600) and optionally its public key, refusing to overwrite
/// either file, then prints the public key.
pub fn run(args: &GenerateKeyArgs) -> Result<()> {
    let Some(secret_path) = &args.cache_secret_key_path else {
        bail!(
            "say where to write the secret key: --secret-key-path PATH (or CACHE_SECRET_KEY_PATH, \
             or cache.secret-key-path in the config file)"
        );
    };
    for path in std::iter::once(secret_path.as_path()).chain(args.public_key_path.as_deref()) {
        if path.exists() {
            bail!(
                "{} already exists; refusing to overwrite it",
                path.display()
            );
        }
    }
    // Writes the file with create_new and mode 0600, so even a file appearing meanwhile is
    // never overwritten.
    let key = keys::load_or_generate(secret_path, Some(&args.name))?;
    if key.name() != args.name {
        bail!(
            "{} appeared while generating and holds another key ({}); left as is",
            secret_path.display(),
            key.name()
        );
    }
    let public = key.public_key().to_nix_string();
    if let Some(path) = &args.public_key_path {
        write_new(path, &public)?;
    }
    println!("{public}");
    Ok(())
}

fn write_new(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}
