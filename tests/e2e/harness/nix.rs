//! The real Nix client (Debian's Nix 2.8), run as child processes.
//!
//! Every invocation gets the settings of `shared/testing-with-nix.md` through its own `NIX_CONFIG`
//! (never the test process's environment), a fresh `XDG_CACHE_HOME` (so Nix's narinfo disk cache
//! never answers for the server under test) and no proxy variables (nothing may leave loopback).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;

use super::{random_hex, unique_dir};

/// `substituters =` keeps Nix from ever asking cache.nixos.org.
const NIX_CONFIG: &str = "experimental-features = nix-command\n\
                          sandbox = false\n\
                          build-users-group =\n\
                          substituters =\n";

/// Generous: a failing substitution retries with back-off for several seconds.
const NIX_TIMEOUT: Duration = Duration::from_secs(150);

/// Variables that could route a child's HTTP traffic somewhere other than loopback.
pub const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
];

/// Size of the random blob in the test closure: big enough that a NAR download takes
/// measurable time (and spans many 64 KiB pieces), small enough to keep tests quick.
pub const BLOB_BYTES: usize = 4_000_000;

/// What a finished Nix command said.
pub struct NixRun {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl NixRun {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the whole transcript unless the command succeeded.
    pub fn expect_success(self) -> Self {
        assert!(self.success(), "nix command failed:\n{self}");
        self
    }
}

impl fmt::Display for NixRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "$ {}\n[{}]\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs one Nix program with the isolated configuration; `work` receives the fresh cache dir.
pub async fn run(work: &Path, program: &str, args: &[&str]) -> NixRun {
    let xdg = unique_dir(work, "xdg");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("NIX_CONFIG", NIX_CONFIG)
        .env("XDG_CACHE_HOME", &xdg)
        .env("XDG_CONFIG_HOME", &xdg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    let command = format!("{program} {}", args.join(" "));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{command}` (is nix installed?): {e}"));
    let output = tokio::time::timeout(NIX_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`{command}` did not finish within {NIX_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("waiting for `{command}`: {e}"));
    NixRun {
        command,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Output lines of a successful command, e.g. the store paths `nix path-info` printed.
fn lines(run: &NixRun) -> Vec<String> {
    run.stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Builds attribute `attr` of the Nix expression in `file` and returns its output path.
pub async fn build_attr(work: &Path, file: &Path, attr: &str) -> String {
    let file = file.to_str().expect("utf-8 path");
    let built = run(work, "nix-build", &[file, "-A", attr, "--no-out-link"])
        .await
        .expect_success();
    lines(&built).pop().expect("nix-build printed a path")
}

/// A closure of freshly built store paths, unique to one test:
/// `top` → `middle` → `leaf` (a reference chain of three) and `top` → `blob` (a few MB of
/// random bytes).
pub struct Closure {
    pub top: String,
    pub middle: String,
    pub leaf: String,
    pub blob: String,
    /// Every path of the closure, sorted.
    pub paths: Vec<String>,
}

impl Closure {
    /// Builds the closure with `builtins.derivation` and `/bin/sh`; a random marker attribute
    /// makes every call produce new store paths.
    pub async fn build(work: &Path) -> Closure {
        Closure::build_with_blob(work, BLOB_BYTES).await
    }

    /// [`Closure::build`] with a blob of `blob_bytes` random bytes.
    pub async fn build_with_blob(work: &Path, blob_bytes: usize) -> Closure {
        let marker = random_hex(16);
        let expr = format!(
            r#"let
  marker = "{marker}";
  mk = name: script: builtins.derivation {{
    inherit name marker;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  }};
  blob = mk "e2e-blob" "mkdir -p $out; head -c {blob_bytes} /dev/urandom > $out/blob";
  leaf = mk "e2e-leaf" "mkdir -p $out; echo leaf-{marker} > $out/data";
  middle = mk "e2e-middle" "mkdir -p $out; echo ${{leaf}} > $out/ref";
  top = mk "e2e-top" "mkdir -p $out; echo ${{middle}} > $out/ref; echo ${{blob}} > $out/blob-ref";
in {{ inherit top middle leaf blob; }}
"#
        );
        let file = work.join(format!("closure-{marker}.nix"));
        std::fs::write(&file, expr).expect("write closure.nix");
        let mut out = Vec::new();
        for attr in ["top", "middle", "leaf", "blob"] {
            out.push(build_attr(work, &file, attr).await);
        }
        let [top, middle, leaf, blob] = out.try_into().expect("four paths");
        let mut paths = lines(
            &run(work, "nix-store", &["-qR", &top])
                .await
                .expect_success(),
        );
        paths.sort();
        assert_eq!(paths.len(), 4, "unexpected closure of {top}: {paths:?}");
        Closure {
            top,
            middle,
            leaf,
            blob,
            paths,
        }
    }
}

/// A binary-cache signing key made by `nix-store --generate-binary-cache-key`.
pub struct SigningKey {
    pub secret_file: PathBuf,
    /// `name:base64`, as Nix's `trusted-public-keys` wants it.
    pub public: String,
}

impl SigningKey {
    pub async fn generate(work: &Path, name: &str) -> SigningKey {
        let dir = unique_dir(work, "key");
        let secret_file = dir.join("secret");
        let public_file = dir.join("public");
        run(
            work,
            "nix-store",
            &[
                "--generate-binary-cache-key",
                name,
                secret_file.to_str().expect("utf-8"),
                public_file.to_str().expect("utf-8"),
            ],
        )
        .await
        .expect_success();
        let public = std::fs::read_to_string(&public_file)
            .expect("read public key")
            .trim()
            .to_owned();
        SigningKey {
            secret_file,
            public,
        }
    }

    /// Adds this key's signature to every path of `top`'s closure in the local store.
    pub async fn sign(&self, work: &Path, top: &str) {
        let key_file = self.secret_file.to_str().expect("utf-8");
        run(
            work,
            "nix",
            &["store", "sign", "--key-file", key_file, "-r", top],
        )
        .await
        .expect_success();
    }
}

/// The NAR compression of a `file://` binary cache written by `nix copy`.
#[derive(Clone, Copy, Debug)]
pub enum Compression {
    Xz,
    Zstd,
    Bzip2,
    Brotli,
    None,
}

impl Compression {
    /// The name Nix uses in a store URL's `?compression=`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Brotli => "br",
            Compression::None => "none",
        }
    }
}

/// Writes `top`'s closure (with whatever signatures the local store has) as a binary cache
/// directory: `nix-cache-info`, `<hash>.narinfo`, `nar/<filehash>.nar[.xz|.zst]`.
pub async fn copy_to_file_cache(work: &Path, top: &str, dir: &Path, compression: Compression) {
    let url = format!(
        "file://{}?compression={}",
        dir.to_str().expect("utf-8"),
        compression.name()
    );
    run(work, "nix", &["copy", "--to", &url, top])
        .await
        .expect_success();
}

/// A Nix client with its own, initially empty, store (a chroot store under a temp dir).
pub struct NixClient {
    work: PathBuf,
    store: String,
    /// `--option NAME VALUE` pairs added to every command that talks to a cache.
    options: Vec<(String, String)>,
}

impl NixClient {
    pub fn new(work: &Path) -> NixClient {
        let store = unique_dir(work, "client-store");
        NixClient {
            work: work.to_owned(),
            store: store.to_str().expect("utf-8").to_owned(),
            options: Vec::new(),
        }
    }

    /// This client with `--option name value` on every command that talks to a cache (e.g.
    /// `netrc-file`).
    pub fn with_option(mut self, name: &str, value: &str) -> NixClient {
        self.options.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `nix copy --from CACHE` of `path` (and its closure), trusting only `trusted_key`.
    pub async fn copy_from(&self, cache_url: &str, trusted_key: &str, path: &str) -> NixRun {
        let mut args = vec![
            "copy",
            "--from",
            cache_url,
            "--to",
            &self.store,
            "--option",
            "trusted-public-keys",
            trusted_key,
        ];
        for (name, value) in &self.options {
            args.extend(["--option", name, value]);
        }
        args.push(path);
        run(&self.work, "nix", &args).await
    }

    /// The closure of `path` in this client's store, sorted; `None` when `path` is not there.
    pub async fn closure(&self, path: &str) -> Option<Vec<String>> {
        let run = run(
            &self.work,
            "nix",
            &["path-info", "--store", &self.store, "-r", path],
        )
        .await;
        run.success().then(|| {
            let mut paths = lines(&run);
            paths.sort();
            paths
        })
    }

    /// `nix store verify -r`: contents match their NarHash and each path carries a signature
    /// that verifies with `trusted_key`.
    pub async fn verify(&self, path: &str, trusted_key: &str) -> NixRun {
        run(
            &self.work,
            "nix",
            &[
                "store",
                "verify",
                "--store",
                &self.store,
                "--trusted-public-keys",
                trusted_key,
                "-r",
                path,
            ],
        )
        .await
    }

    /// Substitutes `closure` from `cache_url` and proves that all of it arrived intact and
    /// signed by `trusted_key`.
    pub async fn substitute_ok(&self, cache_url: &str, trusted_key: &str, closure: &Closure) {
        self.copy_from(cache_url, trusted_key, &closure.top)
            .await
            .expect_success();
        assert_eq!(
            self.closure(&closure.top).await.as_ref(),
            Some(&closure.paths),
            "the client store does not hold exactly the closure"
        );
        self.verify(&closure.top, trusted_key)
            .await
            .expect_success();
    }

    /// Substituting `path` from `cache_url` fails, and `path` does not arrive.
    pub async fn substitute_fails(&self, cache_url: &str, trusted_key: &str, path: &str) {
        let run = self.copy_from(cache_url, trusted_key, path).await;
        assert!(!run.success(), "substitution should have failed:\n{run}");
        assert_eq!(
            self.closure(path).await,
            None,
            "{path} arrived despite the failure"
        );
    }
}
