//! Uploads: ncps accepting `PUT`s in front of an empty upstream, binary-cache directories
//! written by `nix copy --to file://` (real NARs and narinfos to send by hand), and what a
//! refused upload must not leave behind.

use std::path::PathBuf;

use reqwest::Method;

use super::narinfo::{NarInfo, store_hash};
use super::nix::{self, Compression, NixRun};
use super::{Ncps, NcpsConfig, TestEnv, Upstream, eventually, http, random_hex, unique_dir};

/// What an empty cache says about itself; ncps's upstream in upload tests serves only this, so
/// it answers 404 for every narinfo and ncps's answers say what ncps has itself.
const EMPTY_CACHE_INFO: &str = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";

/// A fresh store path, built by the local Nix.
pub struct BuiltPath {
    pub path: String,
    /// Base name of its derivation (`<hash>-<name>.drv`), as `/log/<drv>` names it.
    pub drv: String,
    /// A line the build printed, hence part of its build log.
    pub log_marker: String,
}

impl TestEnv {
    /// A served binary cache that holds nothing.
    pub async fn empty_upstream(&self) -> Upstream {
        let dir = unique_dir(self.path(), "empty-upstream");
        std::fs::write(dir.join("nix-cache-info"), EMPTY_CACHE_INFO).expect("write cache info");
        Upstream::serve(&dir).await
    }

    /// `ncps serve` with `args` (none of the upload flags are implied) in front of an empty
    /// upstream.
    pub async fn upload_server(&self, args: &[&str]) -> UploadServer {
        let upstream = self.empty_upstream().await;
        let upstream_key = self.key("upstream-1").await;
        let config = self
            .ncps_config(&[&upstream], &[&upstream_key.public])
            .with_args(args);
        let ncps = self.ncps(&config).await;
        UploadServer {
            ncps,
            _upstream: upstream,
            config,
            work: self.path().to_owned(),
        }
    }

    /// One new store path holding `payload_bytes` random bytes, whose build prints a marker.
    pub async fn built_path(&self, payload_bytes: usize) -> BuiltPath {
        let marker = random_hex(16);
        let log_marker = format!("e2e-build-log-{marker}");
        let expr = format!(
            r#"{{ single = builtins.derivation {{
  name = "e2e-single";
  marker = "{marker}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo {log_marker}; head -c {payload_bytes} /dev/urandom > $out" ];
  PATH = "/usr/bin:/bin";
}}; }}
"#
        );
        let file = self.path().join(format!("single-{marker}.nix"));
        std::fs::write(&file, expr).expect("write single.nix");
        let path = nix::build_attr(self.path(), &file, "single").await;
        let deriver = nix::run(self.path(), "nix-store", &["--query", "--deriver", &path])
            .await
            .expect_success();
        let drv = deriver
            .stdout
            .trim()
            .strip_prefix("/nix/store/")
            .unwrap_or_else(|| panic!("no deriver for {path}: {deriver}"))
            .to_owned();
        BuiltPath {
            path,
            drv,
            log_marker,
        }
    }

    /// `nix copy --to file://…` of `top`'s closure (with the signatures it has) into a new
    /// directory, which is not served.
    pub async fn file_cache(&self, top: &str, compression: Compression) -> FileCache {
        let dir = unique_dir(self.path(), "file-cache");
        nix::copy_to_file_cache(self.path(), top, &dir, compression).await;
        FileCache { dir }
    }
}

/// A binary-cache directory as `nix copy --to file://` wrote it: exactly what `nix copy --to
/// http://` would upload.
pub struct FileCache {
    pub dir: PathBuf,
}

impl FileCache {
    /// The narinfo of `store_path`, as written.
    pub fn narinfo_text(&self, store_path: &str) -> String {
        let file = self.dir.join(format!("{}.narinfo", store_hash(store_path)));
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
    }

    pub fn narinfo(&self, store_path: &str) -> NarInfo {
        NarInfo::parse(&self.narinfo_text(store_path))
    }

    /// The NAR's URL relative to the cache root (`nar/<filehash>.nar.xz`).
    pub fn nar_url(&self, store_path: &str) -> String {
        self.narinfo(store_path).field("URL").to_owned()
    }

    /// The NAR file, as written.
    pub fn nar(&self, store_path: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(self.nar_url(store_path))).expect("read NAR file")
    }
}

/// Sends `body` with `method` (PUT, DELETE, …) and reads the whole response; `Err` for
/// transport errors.
pub async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<http::Resp, reqwest::Error> {
    let mut request = client.request(method, url).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    Ok(http::Resp {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await?,
    })
}

/// ncps in front of an empty upstream, as [`TestEnv::upload_server`] starts it.
// Fields drop in order: ncps stops before the upstream.
pub struct UploadServer {
    pub ncps: Ncps,
    /// The empty upstream, served as long as ncps runs.
    _upstream: Upstream,
    pub config: NcpsConfig,
    work: PathBuf,
}

impl UploadServer {
    /// The absolute URL of a path relative to the cache root.
    pub fn url_for(&self, rel: &str) -> String {
        self.ncps.url_for(rel)
    }

    pub fn narinfo_url(&self, store_path: &str) -> String {
        self.url_for(&format!("{}.narinfo", store_hash(store_path)))
    }

    /// `method` on `rel` (relative to the cache root) with `headers` and `body`; panics on a
    /// transport error.
    pub async fn request(
        &self,
        method: Method,
        rel: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> http::Resp {
        let url = self.url_for(rel);
        send(&http::client(), method.clone(), &url, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }

    /// Uploads `store_path` from `cache` as `nix copy --to` does (the NAR, then the narinfo),
    /// under `prefix` (`""` or `"upload/"`); both must succeed.
    pub async fn put_path(
        &self,
        cache: &FileCache,
        store_path: &str,
        prefix: &str,
        headers: &[(&str, &str)],
    ) {
        let uploads = [
            (
                format!("{prefix}{}", cache.nar_url(store_path)),
                cache.nar(store_path),
            ),
            (
                format!("{prefix}{}.narinfo", store_hash(store_path)),
                cache.narinfo_text(store_path).into_bytes(),
            ),
        ];
        for (rel, body) in uploads {
            let resp = self.request(Method::PUT, &rel, headers, body).await;
            assert!(
                [200, 201, 204].contains(&resp.status),
                "PUT /{rel}: want a success as Nix accepts it, got {}: {}",
                resp.status,
                resp.excerpt()
            );
        }
    }

    /// `nix copy --to` this server (`?compression=…`) of `path`'s closure from the local
    /// store, with `--option name value` for each of `options`.
    pub async fn nix_copy_to(
        &self,
        path: &str,
        compression: Compression,
        options: &[(&str, &str)],
    ) -> NixRun {
        let url = format!("{}?compression={}", self.ncps.url(), compression.name());
        let mut args = vec!["copy", "--to", &url];
        for (name, value) in options {
            args.extend(["--option", name, value]);
        }
        args.push(path);
        nix::run(&self.work, "nix", &args).await
    }

    /// Every NAR file and chunk file in storage.
    pub fn stored_files(&self) -> Vec<PathBuf> {
        let mut files = self.config.whole_nar_files();
        files.extend(self.config.chunk_files());
        files.into_iter().map(|(path, _)| path).collect()
    }

    /// Temporary files of uploads (`upload-*`) in ncps's temp dir (and `<data dir>/tmp`).
    pub fn upload_temp_files(&self) -> Vec<PathBuf> {
        [&self.config.temp_dir, &self.config.data_dir.join("tmp")]
            .into_iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flat_map(|entries| entries.flatten().map(|e| e.path()))
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("upload-"))
            })
            .collect()
    }

    /// Waits (briefly: clean-up may trail the response) until storage holds exactly
    /// `stored_before` and no upload temp file is left.
    pub async fn assert_nothing_kept(&self, stored_before: &[PathBuf], what: &str) {
        eventually(&format!("nothing kept {what}"), || async {
            let stored = self.stored_files();
            let added: Vec<_> = stored
                .iter()
                .filter(|f| !stored_before.contains(f))
                .collect();
            let removed: Vec<_> = stored_before
                .iter()
                .filter(|f| !stored.contains(f))
                .collect();
            let temps = self.upload_temp_files();
            if added.is_empty() && removed.is_empty() && temps.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "NAR/chunk files added {added:?}, removed {removed:?}; upload temp files \
                     {temps:?}"
                ))
            }
        })
        .await;
    }

    /// The single number `sql` selects from ncps's SQLite database.
    pub fn db_count(&self, sql: &str) -> u64 {
        self.config.sqlite_count(sql)
    }
}
