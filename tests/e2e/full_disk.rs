//! A full disk: the cache's data (database, storage, temporary files) on a small file system
//! that fills up during a download and during an upload. The request fails cleanly, nothing
//! partial is kept, what is stored is still served, and once space is freed the same requests
//! succeed.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::Method;

use crate::harness::narinfo::store_hash;
use crate::harness::upload::send;
use crate::harness::{Compression, NarInfo, TestEnv, http, unique_dir};

/// A tmpfs of a fixed size, unmounted when dropped. Mounting needs root (or `sudo -n`).
struct SmallFs {
    dir: PathBuf,
    ballast: PathBuf,
}

/// Runs `argv` as root: directly when we are root, else through `sudo -n`.
fn as_root(argv: &[&str]) -> std::process::Output {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .expect("run id")
        .stdout
        == b"0\n";
    let mut command = if root {
        Command::new(argv[0])
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", argv[0]]);
        c
    };
    command
        .args(&argv[1..])
        .output()
        .expect("run a root command")
}

impl SmallFs {
    fn mount(parent: &Path, bytes: u64) -> SmallFs {
        let dir = unique_dir(parent, "small-fs");
        let size = format!("size={bytes}");
        let mounted = as_root(&["mount", "-t", "tmpfs", "-o", &size, "tmpfs", path_str(&dir)]);
        assert!(
            mounted.status.success(),
            "the full-disk tests mount a small tmpfs, which needs root or passwordless sudo: {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        let ballast = dir.join("ballast");
        SmallFs { dir, ballast }
    }

    /// Bytes still free.
    fn available(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail", path_str(&self.dir)])
            .output()
            .expect("run df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df's answer")
    }

    /// Fills the file system until only `free` bytes are left.
    fn fill_leaving(&self, free: u64) {
        let fill = self.available().saturating_sub(free);
        std::fs::write(&self.ballast, vec![0x55; fill as usize]).expect("write the ballast");
    }

    fn free_space(&self) {
        std::fs::remove_file(&self.ballast).expect("remove the ballast");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = as_root(&["umount", "-l", path_str(&self.dir)]);
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// GETs a path's narinfo and NAR from ncps and checks the bytes.
async fn served_correctly(base: &str, path: &str) -> Result<(), String> {
    let narinfo = http::get(&format!("{base}/{}.narinfo", store_hash(path))).await;
    if narinfo.status != 200 {
        return Err(format!("narinfo: status {}", narinfo.status));
    }
    let narinfo = NarInfo::parse(&narinfo.text());
    let url = format!("{base}/{}", narinfo.field("URL"));
    match http::fetch(&http::client(), Method::GET, &url, &[]).await {
        Ok(resp) if resp.status == 200 => narinfo.verify_nar(&resp.body),
        Ok(resp) => Err(format!("NAR: status {}: {}", resp.status, resp.excerpt())),
        Err(e) => Err(format!("NAR: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_that_fills_the_disk_fails_cleanly_and_works_once_space_is_freed() {
    let env = TestEnv::new();
    let closure = env.closure_with_blob(3_000_000).await;
    let key = env.key("upstream-1").await;
    key.sign(env.path(), &closure.top).await;
    let upstream = env.upstream(&closure, Compression::Xz).await;
    let fs = SmallFs::mount(env.path(), 16 << 20);
    let mut config = env.ncps_config(&[&upstream], &[&key.public]);
    config.data_dir = fs.dir.join("data");
    config.temp_dir = fs.dir.join("data/tmp");
    let ncps = env.ncps(&config).await;
    let base = ncps.url();
    let small = [&closure.leaf, &closure.middle, &closure.top];
    for path in small {
        served_correctly(&base, path).await.expect("a small path");
    }
    let stored_before = files_under(&config.data_dir.join("store"));

    // 1 MB left: the blob's NAR (3 MB) cannot be kept.
    fs.fill_leaving(1 << 20);
    let blob = served_correctly(&base, &closure.blob).await;
    assert!(
        blob.is_err(),
        "the blob was served complete with the disk full"
    );
    let leftovers: Vec<_> = files_under(&config.data_dir.join("store"))
        .into_iter()
        .filter(|f| !stored_before.contains(f))
        .collect();
    assert!(leftovers.is_empty(), "partial files kept: {leftovers:?}");
    assert!(
        files_under(&config.temp_dir).is_empty(),
        "temporary files kept"
    );
    // What is stored is still served, with the disk full.
    for path in small {
        served_correctly(&base, path)
            .await
            .expect("a stored path with the disk full");
    }

    fs.free_space();
    served_correctly(&base, &closure.blob)
        .await
        .expect("the blob once space is freed");
    let ncps_key = ncps.pubkey().await;
    env.client().substitute_ok(&base, &ncps_key, &closure).await;
    drop(ncps);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_that_fills_the_disk_fails_cleanly_and_works_once_space_is_freed() {
    let env = TestEnv::new();
    let path = env.built_path(3_000_000).await.path;
    let cache = env.file_cache(&path, Compression::None).await;
    let upstream = env.empty_upstream().await;
    let key = env.key("upstream-1").await;
    let fs = SmallFs::mount(env.path(), 16 << 20);
    let mut config = env
        .ncps_config(&[&upstream], &[&key.public])
        .with_args(&["--cache-allow-put-verb"]);
    config.data_dir = fs.dir.join("data");
    config.temp_dir = fs.dir.join("data/tmp");
    let ncps = env.ncps(&config).await;
    let client = http::client();
    let nar_url = ncps.url_for(&cache.nar_url(&path));
    let narinfo_url = ncps.url_for(&format!("{}.narinfo", store_hash(&path)));

    fs.fill_leaving(1 << 20);
    let refused = send(&client, Method::PUT, &nar_url, &[], cache.nar(&path)).await;
    let status = refused.as_ref().map(|r| r.status);
    assert!(
        status.as_ref().is_ok_and(|s| *s == 507),
        "a NAR upload with the disk full: want 507 Insufficient Storage, got {status:?}"
    );
    assert!(
        files_under(&config.data_dir.join("store")).is_empty(),
        "partial NAR kept"
    );
    assert!(
        files_under(&config.temp_dir).is_empty(),
        "temporary files kept"
    );
    assert_eq!(config.sqlite_count("SELECT COUNT(*) FROM nars"), 0);
    assert_eq!(config.sqlite_count("SELECT COUNT(*) FROM uploaded_nars"), 0);
    http::get(&narinfo_url)
        .await
        .expect_status(404, "nothing of the refused upload");

    fs.free_space();
    let nar = send(&client, Method::PUT, &nar_url, &[], cache.nar(&path))
        .await
        .expect("PUT the NAR");
    assert!((200..300).contains(&nar.status), "NAR: {}", nar.status);
    let narinfo = send(
        &client,
        Method::PUT,
        &narinfo_url,
        &[],
        cache.narinfo_text(&path).into_bytes(),
    )
    .await
    .expect("PUT the narinfo");
    assert!(
        (200..300).contains(&narinfo.status),
        "narinfo: {}",
        narinfo.status
    );
    served_correctly(&ncps.url(), &path)
        .await
        .expect("the upload once space is freed");
    drop(ncps);
}
