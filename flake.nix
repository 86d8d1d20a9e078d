{
  description = "ncps: Nix binary cache proxy (Rust)";

  # rustc >= 1.85 (edition 2024) is needed: nixos-25.05 or later.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        ncps = pkgs.callPackage ./nix/package.nix { };
        default = ncps;
        # The OCI image (charts/ncps runs it): `nix build .#image && docker load < result`.
        image = pkgs.callPackage ./nix/image.nix { inherit ncps; };
      });

      overlays.default = final: _prev: {
        ncps = final.callPackage ./nix/package.nix { };
      };

      # services.ncps, running this flake's package unless `services.ncps.package` is set.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.ncps.package = lib.mkDefault (
            self.packages.${pkgs.stdenv.hostPlatform.system}.default
              or (pkgs.callPackage ./nix/package.nix { })
          );
        };
      nixosModules.ncps = self.nixosModules.default;

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo
            rustc
            rustfmt
            clippy
            cargo-nextest
            # The end-to-end tests drive the real Nix client and inspect SQLite databases.
            nix
            sqlite
            # Throwaway database and lock servers for the multi-replica tests.
            postgresql
            mariadb
            redis
          ];
        };
      });

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        vm = import ./nix/tests/vm.nix {
          inherit pkgs;
          module = self.nixosModules.default;
        };
      });
    };
}
