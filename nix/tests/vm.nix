# NixOS VM test of the module: three machines on a private network.
#
#   upstream  a file binary cache (`nix copy --to file://`, signed with a test key) served by
#             python's http.server
#   cache     services.ncps with that upstream and key, its own signing key (a credential), a
#             read token (a credential, passed by the start script), chunking and metrics on
#   client    Nix trusting only the cache's key, with the token in its netrc-file
#
# The client substitutes a closure through ncps; then, with the upstream stopped and ncps
# restarted, substitutes it again from ncps's storage alone.
#
#   nix build .#checks.x86_64-linux.vm                     (flake)
#   nix-build nix/tests/vm.nix                             (<nixpkgs> on NIX_PATH)
{
  pkgs ? import <nixpkgs> { },
  # The module under test; the flake passes its nixosModules.default.
  module ? ../module.nix,
}:

let
  # Test-only key pairs (made with `ncps generate-key`). Never use them anywhere else.
  upstreamKey = {
    secret = "upstream-1:KrOUWHj82lWPPwdqlI6R1+d0NoDEkHusymKKp/4HhXemolMx+wfovlbMapj+TYLGE1y+ffo9Tet+gCZLAcjgrg==";
    public = "upstream-1:pqJTMfsH6L5WzGqY/k2CxhNcvn36PU3rfoAmSwHI4K4=";
  };
  cacheKey = {
    secret = "cache-1:9/bANFSzmXpKiJIQyAYBQ9S4AePhCvP6vHv2nWAxWvMiBHbU+4nL2MmEEzwODNSEW0TuyOL8bLKU9vV9/t12xw==";
    public = "cache-1:IgR21PuJy9jJhBM8DgzUhFtE7sji/GyylPb1ff7ddsc=";
  };
  readToken = "vm-test-read-token";
  # Test secrets may live in the store; real ones must not (see the option docs).
  cacheKeyFile = pkgs.writeText "ncps-test-secret-key" cacheKey.secret;

  # What the client substitutes: a path that refers to hello, so a closure of two paths the
  # client lacks (hello's own dependencies, glibc, it has already) comes through the cache.
  payload = pkgs.writeText "ncps-vm-payload" "refers to ${pkgs.hello}\n";
in
pkgs.testers.runNixOSTest {
  name = "ncps";

  nodes = {
    upstream =
      { pkgs, ... }:
      {
        # Registered in this machine's store, so `nix copy` can put it in the file cache.
        system.extraDependencies = [ payload ];
        environment.etc."upstream-key".text = upstreamKey.secret;
        systemd.tmpfiles.rules = [ "d /srv/cache 0755 root root -" ];
        systemd.services.upstream-cache = {
          wantedBy = [ "multi-user.target" ];
          serviceConfig.ExecStart = "${pkgs.python3}/bin/python3 -m http.server 8080 --directory /srv/cache";
        };
        networking.firewall.allowedTCPPorts = [ 8080 ];
      };

    cache =
      { pkgs, ... }:
      {
        imports = [ module ];
        services.ncps = {
          enable = true;
          hostname = "cache";
          upstream.urls = [ "http://upstream:8080" ];
          upstream.publicKeys = [ upstreamKey.public ];
          secretKeyPath = "${cacheKeyFile}";
          uploads.getTokenFile = "${pkgs.writeText "ncps-test-read-token" readToken}";
          cdc.enable = true;
          prometheus.enable = true;
          logLevel = "debug";
          openFirewall = true;
        };
      };

    client =
      { lib, ... }:
      {
        nix.settings = {
          substituters = lib.mkForce [ "http://cache:8501" ];
          trusted-public-keys = lib.mkForce [ cacheKey.public ];
          netrc-file = "/etc/nix/netrc";
        };
        environment.etc."nix/netrc".text = "machine cache login nix password ${readToken}\n";
      };
  };

  testScript = ''
    auth = "-H 'Authorization: Bearer ${readToken}'"

    upstream.start()
    upstream.wait_for_unit("upstream-cache.service")
    upstream.wait_for_open_port(8080)
    upstream.succeed(
        "nix --extra-experimental-features nix-command copy "
        "--to 'file:///srv/cache?compression=xz&secret-key=/etc/upstream-key' ${payload}"
    )
    upstream.succeed("grep -q 'StoreDir: /nix/store' /srv/cache/nix-cache-info")

    cache.start()
    cache.wait_for_unit("ncps.service")
    cache.wait_for_open_port(8501)
    with subtest("the service runs hardened as a dynamic user"):
        cache.succeed("systemctl show -p DynamicUser --value ncps.service | grep -qx yes")
        user = cache.succeed("ps -o user= -C ncps").strip()
        assert user != "root", f"ncps runs as {user}"
        cache.succeed("test -f /var/lib/ncps/db/db.sqlite")
        # The configured key is used: none is generated in the data directory.
        cache.fail("test -e /var/lib/ncps/secret.key")
        # No secret on the command line.
        cache.fail("grep -q ${readToken} /proc/$(pgrep -x ncps)/cmdline")

    client.start()
    client.wait_for_unit("multi-user.target")
    with subtest("tokens and keys over HTTP"):
        client.succeed("curl -sf http://cache:8501/healthz")
        client.fail("curl -sf http://cache:8501/nix-cache-info")
        client.succeed(f"curl -sf {auth} http://cache:8501/nix-cache-info | grep -q 'StoreDir: /nix/store'")
        pubkey = client.succeed(f"curl -sf {auth} http://cache:8501/pubkey").strip()
        assert pubkey == "${cacheKey.public}", f"ncps serves the key {pubkey!r}"
        client.succeed("curl -sf http://cache:8501/metrics | grep -q '^ncps_'")

    with subtest("the client substitutes through ncps, trusting only ncps's key"):
        client.fail("nix-store -q --hash ${payload}")
        client.succeed("nix-store --realise ${payload}")
        client.succeed("grep -q 'refers to ${pkgs.hello}' ${payload}")
        client.succeed("${pkgs.hello}/bin/hello")
        sigs = client.succeed("nix --extra-experimental-features nix-command path-info --sigs ${payload}")
        assert "cache-1:" in sigs, f"not signed by ncps: {sigs}"
        # Chunking is on: the NARs were stored as chunks.
        cache.succeed("find /var/lib/ncps/ -name '*.zst' -path '*chunks*' | grep -q .")

    with subtest("admin commands on the service's data"):
        cache.succeed("ncps fsck --cache-storage-local /var/lib/ncps --cache-secret-key-path ${cacheKeyFile}")
        cache.fail("test -e /var/lib/ncps/secret.key")
        cache.succeed("chown -R --reference=/var/lib/private/ncps /var/lib/private/ncps")

    with subtest("after a restart, ncps serves from its storage with the upstream gone"):
        upstream.succeed("systemctl stop upstream-cache.service")
        cache.succeed("systemctl restart ncps.service")
        cache.wait_for_open_port(8501)
        client.succeed("nix-store --delete ${payload} ${pkgs.hello}")
        client.succeed("nix-store --realise ${payload}")
        client.succeed("${pkgs.hello}/bin/hello")
  '';
}
