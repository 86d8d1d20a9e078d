# The ncps binary, built from this repository with nixpkgs' Rust tooling.
#
#   nix build .#ncps              (flake)
#   pkgs.callPackage ./nix/package.nix { }
#
# Needs rustc >= 1.85 (edition 2024): nixpkgs 25.05 or later.
#
# Native code: the -sys crates in Cargo.lock (liblzma-sys, built from its bundled xz sources
# by its `static` feature; zstd-sys, bzip2-sys, libsqlite3-sys with sqlx's bundled SQLite) and
# ring compile their bundled C sources with cc, so nothing but the stdenv's C compiler is
# needed; pkg-config only lets bzip2-sys look for a system library first (none is given, so it
# builds its own).
{
  lib,
  rustPlatform,
  pkg-config,
}:

let
  cargoToml = builtins.fromTOML (builtins.readFile ../Cargo.toml);
  cargoConfig = builtins.fromTOML (builtins.readFile ../.cargo/config.toml);
in
rustPlatform.buildRustPackage {
  pname = "ncps";
  inherit (cargoToml.workspace.package) version;

  # Only what the build reads: the workspace, the SQL migrations (embedded at compile time by
  # sqlx::migrate!) and tests/ (crates/ncps/Cargo.toml declares the e2e test target there).
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.difference (lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../crates
      ../migrations
      ../tests
    ]) (lib.fileset.maybeMissing ../crates/ncps-nix/fuzz);
  };

  cargoLock.lockFile = ../Cargo.lock;

  # How the bundled SQLite is compiled (see .cargo/config.toml, which nixpkgs' cargo set-up
  # may not keep).
  inherit (cargoConfig.env) LIBSQLITE3_FLAGS;

  nativeBuildInputs = [ pkg-config ];

  # The binary only; the library crates are compiled into it.
  cargoBuildFlags = [
    "-p"
    "ncps"
  ];

  # Unit tests of every crate (libraries and the binary), not the integration tests: the e2e
  # suite (tests/e2e) drives the real Nix client against servers it starts, needs root and
  # writes to /nix/store, none of which the build sandbox has. They run in CI (scripts/test)
  # and, for the packaged service, in the NixOS VM test (nix/tests/vm.nix). The unit tests
  # need only the loopback interface; the ncps-db tests' PostgreSQL and MySQL variants skip
  # themselves when NCPS_TEST_POSTGRES_URL / NCPS_TEST_MYSQL_URL are unset (as here, where CI
  # is unset too).
  cargoTestFlags = [
    "--workspace"
    "--lib"
    "--bins"
  ];

  # nixpkgs' services.ncps module runs `dbmate-ncps up` before `serve` (the Go ncps package
  # shipped its migration tool under that name): the same, as `ncps migrate up`.
  postInstall = ''
    install -Dm755 ${./dbmate-ncps.sh} $out/bin/dbmate-ncps
    substituteInPlace $out/bin/dbmate-ncps --replace-fail '@ncps@' "$out/bin/ncps"
  '';

  meta = {
    description = "Nix binary cache proxy: caches, verifies, re-signs and serves store paths from upstream caches";
    homepage = "https://github.com/ncps-rs/ncps";
    license = lib.licenses.mit;
    mainProgram = "ncps";
    platforms = lib.platforms.linux;
  };
}
