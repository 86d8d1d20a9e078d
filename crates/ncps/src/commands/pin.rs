//! `ncps pin`, `ncps unpin` and `ncps pins`: store paths an operator wants kept. A pin protects
//! the path and its whole reference closure from eviction; pinning a path that is not cached
//! yet is allowed and protects it once it is fetched.
#![allow(clippy::print_stdout)] // the listing and confirmations are these commands' output

use anyhow::{Context, Result, bail};
use ncps_core::CacheError;
use ncps_nix::{STORE_DIR, StorePath, StorePathHash};

use super::format_utc;
use crate::cli::{AdminArgs, PinArgs};

/// Parses `/nix/store/<hash>-<name>`, `<hash>-<name>` or `<hash>` into the path's hash.
pub fn parse_path_arg(arg: &str) -> Result<StorePathHash> {
    let trimmed = arg.trim().trim_end_matches('/');
    let base = trimmed
        .strip_prefix(STORE_DIR)
        .map(|rest| rest.trim_start_matches('/'))
        .unwrap_or(trimmed);
    let hash = if base.len() > 32 {
        *StorePath::parse_base_name(base)
            .with_context(|| format!("{arg:?} is not a store path"))?
            .hash()
    } else {
        StorePathHash::parse(base)
            .with_context(|| format!("{arg:?} is not a store path or store path hash"))?
    };
    Ok(hash)
}

/// All arguments parsed first, so a typo changes nothing.
fn parse_all(paths: &[String]) -> Result<Vec<(String, StorePathHash)>> {
    paths
        .iter()
        .map(|p| Ok((p.clone(), parse_path_arg(p)?)))
        .collect()
}

/// Pins each path, saying which are not cached yet.
pub async fn pin(args: PinArgs) -> Result<()> {
    let hashes = parse_all(&args.paths)?;
    let maintenance = super::open(&args.storage).await?;
    for (arg, hash) in hashes {
        let known = maintenance.cached_store_path(&hash).await?;
        let name = known.as_ref().map_or(arg.clone(), |p| p.to_absolute());
        if !maintenance.pin(&hash).await? {
            println!("already pinned: {name}");
            continue;
        }
        match known {
            Some(_) => println!("pinned {name}"),
            None => {
                println!("pinned {name} (note: not in the cache yet; it is protected once fetched)")
            }
        }
    }
    let protected = maintenance.protected_paths().await?;
    println!(
        "{protected} store path{} protected by pins",
        if protected == 1 { " is" } else { "s are" }
    );
    Ok(())
}

/// Removes each pin; a path that was not pinned is reported and the command fails at the end.
pub async fn unpin(args: PinArgs) -> Result<()> {
    let hashes = parse_all(&args.paths)?;
    let maintenance = super::open(&args.storage).await?;
    let mut not_pinned = 0;
    for (arg, hash) in hashes {
        match maintenance.unpin(&hash).await {
            Ok(()) => println!("unpinned {arg}"),
            Err(CacheError::NotFound) => {
                println!("not pinned: {arg}");
                not_pinned += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if not_pinned > 0 {
        bail!("{not_pinned} of the given paths were not pinned");
    }
    Ok(())
}

/// Lists every pin: hash, store path (when cached) and when it was pinned.
pub async fn list(args: AdminArgs) -> Result<()> {
    let maintenance = super::open(&args.storage).await?;
    let pins = maintenance.pins().await?;
    for p in &pins {
        let path = p.store_path.as_deref().unwrap_or("(not cached yet)");
        println!("{}  {path}  pinned {}", p.hash, format_utc(p.created_at));
    }
    let protected = maintenance.protected_paths().await?;
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    println!(
        "{} protecting {}",
        plural(pins.len(), "pin"),
        plural(protected as usize, "store path")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_spellings() {
        let hash = "7rjj86a15146cq1d0ybgnwyqdwgv9lfh";
        let expected = StorePathHash::parse(hash).unwrap();
        for arg in [
            format!("/nix/store/{hash}-hello-2.12"),
            format!("/nix/store/{hash}-hello-2.12/"),
            format!("{hash}-hello-2.12"),
            hash.to_string(),
        ] {
            assert_eq!(parse_path_arg(&arg).unwrap(), expected, "{arg}");
        }
        for bad in [
            "",
            "hello",
            "/nix/store/short-x",
            &format!("{hash}x"),
            "/etc/passwd",
        ] {
            assert!(parse_path_arg(bad).is_err(), "{bad}");
        }
    }
}
