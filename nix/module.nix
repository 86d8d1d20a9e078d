# NixOS module: `services.ncps` runs `ncps serve` as a hardened systemd service.
#
# Every option maps to one `ncps serve` flag (see docs/configuration.md); options left at null
# are not passed, so ncps's own default (or the `settings` file's value) applies. Secrets
# (signing key, tokens, netrc, database URL, S3 and Redis passwords) are read from files through systemd's
# LoadCredential= and never enter the Nix store or the command line.
#
# Written against a small set of lib functions (mkOption, mkEnableOption, mkIf, types,
# literalExpression, hasPrefix, removePrefix; pkgs.formats.json, pkgs.writeShellScript) so that
# nix/tests/eval-stub.nix can evaluate it without nixpkgs.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    mkOption
    mkEnableOption
    mkIf
    types
    literalExpression
    hasPrefix
    removePrefix
    ;

  # nixpkgs' option paths (cache.hostName, …) folded into this module's own.
  nixpkgsOptions = import ./nixpkgs-options.nix { inherit lib; };
  cfg = nixpkgsOptions.fold config.services.ncps;
  settingsFormat = pkgs.formats.json { };

  # The settings file (JSON is YAML: ncps reads it like its config.yaml).
  configFile = if cfg.settings == { } then null else "${settingsFormat.generate "ncps.json" cfg.settings}";

  command = import ./command.nix {
    inherit cfg configFile;
    ncps = "${cfg.package}/bin/ncps";
  };

  startScript = pkgs.writeShellScript "ncps-start" command.startScript;
  executable = if command.needsStartScript then "${startScript}" else "${cfg.package}/bin/ncps";

  # Directories ncps writes to: under /var/lib they are systemd state directories (created and
  # owned for the dynamic user); anywhere else they must be made writable by hand.
  isUnder = dir: path: path == dir || hasPrefix "${dir}/" path;
  writableDirs = builtins.filter (p: p != null) [
    cfg.storage.local
    cfg.tempPath
  ];
  extraStateDirs = map (removePrefix "/var/lib/") (
    builtins.filter (p: isUnder "/var/lib" p && !isUnder "/var/lib/ncps" p) writableDirs
  );
  readWritePaths = builtins.filter (p: !isUnder "/var/lib" p) writableDirs;

  nullOrStr =
    description: example:
    mkOption {
      type = types.nullOr types.str;
      default = null;
      inherit description example;
    };

  secretFile =
    description:
    mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/ncps";
      description = ''
        ${description} Give an absolute path as a string (not a Nix path literal, which would
        copy the secret into the world-readable Nix store). systemd loads it as a credential
        (LoadCredential=) readable only by the service, so its owner and mode do not matter.
      '';
    };
in
{
  # nixpkgs has its own services.ncps (for the Go ncps): this module replaces it, so that a
  # system importing both does not declare every option twice.
  disabledModules = [ "services/networking/ncps.nix" ];

  options.services.ncps = nixpkgsOptions.options // {
    enable = mkEnableOption "ncps, the Nix binary cache proxy";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The ncps package to run. The flake's `nixosModules.default` sets it to the flake's `packages.default`.";
    };

    hostname = nullOrStr ''
      Name of the cache (`--cache-hostname`), also the name of the signing key ncps generates
      on first start. Null: the machine's hostname.
    '' "cache.example.lan";

    storage = {
      local = mkOption {
        type = types.str;
        default = "/var/lib/ncps";
        description = ''
          Data directory (`--cache-storage-local`): NARs and chunks, the SQLite database, the
          generated signing key and downloads in progress. The default is the service's
          StateDirectory. Another directory under /var/lib becomes a StateDirectory too; one
          elsewhere is added to ReadWritePaths and must be writable by the service (it runs as
          a dynamic user, so in practice keep it under /var/lib).
        '';
      };

      s3 = {
        bucket = nullOrStr ''
          S3 bucket for NARs and chunks (`--cache-storage-s3-bucket`); the data directory then
          holds only the database, the generated key and temporary files.
        '' "ncps";
        endpoint = nullOrStr "S3-compatible endpoint URL (`--cache-storage-s3-endpoint`); AWS when null." "http://127.0.0.1:3900";
        region = nullOrStr "S3 region (`--cache-storage-s3-region`)." "us-east-1";
        accessKeyId = nullOrStr "S3 access key id (`--cache-storage-s3-access-key-id`)." "GK0123456789";
        secretAccessKeyFile = secretFile "File holding the S3 secret access key (passed as CACHE_STORAGE_S3_SECRET_ACCESS_KEY).";
        forcePathStyle = mkOption {
          type = types.bool;
          default = false;
          description = "Path-style S3 addressing (`--cache-storage-s3-force-path-style`), for MinIO, Garage and most self-hosted servers.";
        };
      };
    };

    database = {
      url = nullOrStr ''
        Database URL (`--cache-database-url`): `sqlite:PATH`, `postgres://…` or `mysql://…`
        (docs/databases.md). Null: SQLite in the data directory
        (`sqlite:<storage.local>/db/db.sqlite`). A URL with a password belongs in `urlFile`.
      '' "postgres://ncps@localhost/ncps?host=/run/postgresql";
      urlFile = secretFile "File holding the database URL, for URLs with a password (passed as CACHE_DATABASE_URL).";
    };

    tempPath = nullOrStr ''
      Directory for downloads in progress (`--cache-temp-path`). Null: `<storage.local>/tmp`.
      Keep it on the storage's file system, not on a RAM-backed /tmp.
    '' "/var/lib/ncps/tmp";

    secretKeyPath = secretFile ''
      Secret key file in Nix's format (`nix-store --generate-binary-cache-key`,
      `ncps generate-key`) to sign narinfos with (`--cache-secret-key-path`). Null: ncps
      generates `<storage.local>/secret.key` on first start.
    '';

    signNarinfo = mkOption {
      type = types.bool;
      default = true;
      description = "Sign narinfos with the cache's key (`--cache-sign-narinfo`); false passes upstream signatures through.";
    };

    locks = {
      backend = mkOption {
        type = types.nullOr (
          types.enum [
            "local"
            "redis"
            "postgres"
          ]
        );
        default = null;
        description = ''
          Lock backend (`--cache-lock-backend`; default local, for one replica): redis or
          postgres when several replicas share the database and an S3 bucket.
        '';
      };
      downloadTtl = nullOrStr "How long a download lock lives without renewal (`--cache-lock-download-ttl`; default 15s)." "10m";
      redisKeyPrefix = nullOrStr "Prefix of every Redis lock key (`--cache-lock-redis-key-prefix`; default `ncps:lock:`)." "ncps-a:lock:";
      postgresKeyPrefix = nullOrStr "Prefix hashed into every PostgreSQL advisory lock id (`--cache-lock-postgres-key-prefix`; default `ncps:lock:`)." "ncps-a:lock:";
    };

    redis = {
      addrs = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        example = [ "127.0.0.1:6379" ];
        description = "Redis `host:port` for the redis lock backend (`--cache-redis-addrs`; the first is used).";
      };
      username = nullOrStr "Redis ACL user name (`--cache-redis-username`)." "ncps";
      passwordFile = secretFile "File holding the Redis password (passed as CACHE_REDIS_PASSWORD).";
      db = mkOption {
        type = types.nullOr types.ints.unsigned;
        default = null;
        description = "Redis database number (`--cache-redis-db`; default 0).";
      };
      useTls = mkOption {
        type = types.bool;
        default = false;
        description = "Connect to Redis over TLS (`--cache-redis-use-tls`).";
      };
    };

    upstream = {
      urls = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        example = [
          "https://cache.nixos.org"
          "https://nix-community.cachix.org"
        ];
        description = ''
          Upstream caches (`--cache-upstream-url`, repeated). Null: https://cache.nixos.org
          with its key. An empty list: no upstream at all (a cache fed by uploads only).
        '';
      };
      publicKeys = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        example = [
          "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
          "nix-community.cachix.org-1:mB9FSh9qf2dCimDSUo8Zy7bkq5CX+/rkCWyvRCYg3Fs="
        ];
        description = ''
          Public keys trusted for upstream narinfos, as name:base64
          (`--cache-upstream-public-key`, repeated); trusted for every upstream. Required when
          `urls` lists any upstream: ncps refuses narinfos it cannot verify.
        '';
      };
      dialerTimeout = nullOrStr "Connect timeout (`--cache-upstream-dialer-timeout`, Go duration; ncps default 3s)." "5s";
      responseHeaderTimeout = nullOrStr "Response header timeout (`--cache-upstream-response-header-timeout`; default 3s)." "10s";
      stallTimeout = nullOrStr "How long a NAR body may send nothing before it is abandoned (`--cache-upstream-stall-timeout`; default 30s)." "1m";
      negativeTtl = nullOrStr "How long a path every upstream said 404 for is remembered (`--cache-upstream-negative-ttl`; default 30s, 0 disables)." "1m";
      lookup = mkOption {
        type = types.nullOr (
          types.enum [
            "parallel"
            "sequential"
          ]
        );
        default = null;
        description = "How a miss asks several upstreams (`--cache-upstream-lookup`; default parallel).";
      };
      prefetch = mkOption {
        type = types.bool;
        default = false;
        description = "Start downloading a NAR as soon as its narinfo is fetched from upstream (`--cache-upstream-prefetch`).";
      };
      netrcFile = secretFile "netrc file with credentials for private upstreams (`--netrc-file`).";
    };

    server = {
      address = nullOrStr ''
        Address to listen on. Null: every interface (IPv6 and IPv4). An IPv6 address is
        written without brackets.
      '' "127.0.0.1";
      port = mkOption {
        type = types.port;
        default = 8501;
        description = "Port to listen on (`--server-addr` is `<address>:<port>`).";
      };
      addr = nixpkgsOptions.serverAddr;
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `server.port` in the firewall.";
    };

    maxSize = nullOrStr ''
      The most the cache may store (`--cache-max-size`, units K, M, G, T); least recently used
      paths are evicted down to it (hourly unless `lruSchedule` says otherwise).
    '' "200G";
    lruSchedule = nullOrStr ''
      When eviction runs (`--cache-lru-schedule`): cron expression, @hourly-style descriptor or
      `@every <duration>`. Needs `maxSize`.
    '' "0 3 * * *";
    lruScheduleTimezone = nullOrStr "Time zone of `lruSchedule` (`--cache-lru-schedule-timezone`; default Local)." "UTC";

    cdc = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = "Store NARs as content-defined chunks, deduplicated across NARs (`--cache-cdc-enabled`).";
      };
      min = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "Minimum chunk size in bytes (`--cache-cdc-min`; default 16384). Fixed once the cache has chunks.";
      };
      avg = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "Average chunk size in bytes (`--cache-cdc-avg`; default 65536). Fixed once the cache has chunks.";
      };
      max = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "Maximum chunk size in bytes (`--cache-cdc-max`; default 262144). Fixed once the cache has chunks.";
      };
      zstdLevel = mkOption {
        type = types.nullOr (types.ints.between 1 19);
        default = null;
        description = "zstd level of each chunk (`--cache-cdc-zstd-level`; default 1).";
      };
      lazyChunking = mkOption {
        type = types.bool;
        default = false;
        description = "Store NARs whole first and chunk them in the background (`--cache-cdc-lazy-chunking-enabled`).";
      };
      backgroundWorkers = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "Background chunking workers in lazy mode (`--cache-cdc-background-workers`; default 1).";
      };
      lazyZstdLevel = mkOption {
        type = types.nullOr (types.ints.between 1 19);
        default = null;
        description = "zstd level of the chunks lazy chunking makes in the background (`--cache-cdc-lazy-zstd-level`; default 8).";
      };
      deleteDelay = nullOrStr "How long a whole file is kept once its chunks are complete (`--cache-cdc-delete-delay`; default 24h)." "1h";
      lazyRecoverySchedule = nullOrStr "When interrupted lazy chunking is resumed (`--cache-cdc-lazy-recovery-schedule`; default `@every 5m`)." "@every 10m";
      lazyRecoveryBatchSize = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "NARs resumed per recovery run (`--cache-cdc-lazy-recovery-batch-size`; default 100).";
      };
      gcGrace = nullOrStr "How long an unreferenced chunk is kept before deletion (`--cache-cdc-gc-grace`; default 1h)." "2h";
    };

    uploads = {
      allowPut = mkOption {
        type = types.bool;
        default = false;
        description = "Accept uploads, `nix copy --to http://…` (`--cache-allow-put-verb`).";
      };
      allowDelete = mkOption {
        type = types.bool;
        default = false;
        description = "Accept DELETE of narinfos and NARs (`--cache-allow-delete-verb`).";
      };
      maxUploadSize = nullOrStr "Largest NAR upload accepted (`--cache-max-upload-size`; default 32G)." "8G";
      requireTrustedSignature = mkOption {
        type = types.bool;
        default = false;
        description = "Refuse uploaded narinfos without a signature from one of `trustedUploadKeys` (`--cache-require-trusted-signature`).";
      };
      trustedUploadKeys = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Public keys (name:base64) whose signature makes an upload trusted (`--cache-trusted-upload-key`, repeated).";
      };
      getTokenFile = secretFile ''
        File holding the token required to read (passed as CACHE_GET_TOKEN, the
        `--cache-get-token` setting). Clients send it as a bearer token or as the password of
        a netrc entry.
      '';
      putTokenFile = secretFile ''
        File holding the token required to upload and delete (passed as CACHE_PUT_TOKEN, the
        `--cache-put-token` setting). Null: the read token, if any.
      '';
    };

    prometheus.enable = mkOption {
      type = types.bool;
      default = false;
      description = "Serve Prometheus metrics at /metrics (`--prometheus-enabled`).";
    };

    logLevel = mkOption {
      type = types.nullOr (
        types.enum [
          "trace"
          "debug"
          "info"
          "warn"
          "error"
          "fatal"
          "panic"
        ]
      );
      default = null;
      description = "Log level (`--log-level`; default info). `fatal` and `panic` (nixpkgs' names) mean `error`.";
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = literalExpression ''
        {
          cache.upstream.stall-timeout = "1m";
        }
      '';
      description = ''
        ncps configuration file contents (the keys of docs/configuration.md, nested on their
        dots), passed with `--config`. Flags the options above set win over it (command line
        first). Its values land in the world-readable Nix store: put no secret here.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--cache-upstream-lookup=sequential" ];
      description = "Further `ncps serve` arguments, appended as they are.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.cache.storage.s3.accessKeyIdPath == null;
        message = "services.ncps.cache.storage.s3.accessKeyIdPath (nixpkgs' name) cannot be read at evaluation: give the id itself as services.ncps.storage.s3.accessKeyId (it is not a secret; the secret key stays in cache.storage.s3.secretAccessKeyPath).";
      }
      {
        assertion = cfg.cache.redis.password == null;
        message = "services.ncps.cache.redis.password would put the password in the Nix store: give services.ncps.cache.redis.passwordFile (or redis.passwordFile).";
      }
      {
        assertion = cfg.lruSchedule == null || cfg.maxSize != null;
        message = "services.ncps.lruSchedule needs services.ncps.maxSize.";
      }
      {
        assertion =
          cfg.upstream.urls == null
          || cfg.upstream.urls == [ ]
          || (cfg.upstream.publicKeys != null && cfg.upstream.publicKeys != [ ]);
        message = "services.ncps.upstream.urls needs services.ncps.upstream.publicKeys: ncps refuses upstream narinfos it cannot verify.";
      }
      {
        assertion = !cfg.uploads.requireTrustedSignature || cfg.uploads.trustedUploadKeys != [ ];
        message = "services.ncps.uploads.requireTrustedSignature without trustedUploadKeys would refuse every upload.";
      }
      {
        assertion = cfg.database.url == null || cfg.database.urlFile == null;
        message = "services.ncps: set database.url or database.urlFile, not both.";
      }
      {
        assertion = cfg.locks.backend != "redis" || (cfg.redis.addrs != null && cfg.redis.addrs != [ ]);
        message = "services.ncps.locks.backend = \"redis\" needs services.ncps.redis.addrs.";
      }
      {
        assertion = builtins.all (c: hasPrefix "/" c.path) command.credentials;
        message = "services.ncps secret files (secretKeyPath, upstream.netrcFile, uploads.*TokenFile, storage.s3.secretAccessKeyFile, redis.passwordFile, database.urlFile) must be absolute paths.";
      }
    ];

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ cfg.server.port ];

    # For the admin commands (fsck, migrate, pin, …), run by root on the same data.
    environment.systemPackages = [ cfg.package ];

    systemd.services.ncps = {
      description = "ncps Nix binary cache proxy";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];

      serviceConfig = {
        ExecStart = "${executable} ${command.execArgs}";
        Restart = "on-failure";
        RestartSec = "5s";
        # ncps drains in-flight requests for up to 60 s on SIGTERM.
        TimeoutStopSec = "90s";

        DynamicUser = true;
        StateDirectory = builtins.concatStringsSep " " ([ "ncps" ] ++ extraStateDirs);
        StateDirectoryMode = "0700";
        ReadWritePaths = readWritePaths;
        LoadCredential = command.loadCredential;
        LimitNOFILE = 65536;

        # Hardening.
        ProtectSystem = "strict";
        ProtectHome = true;
        NoNewPrivileges = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        CapabilityBoundingSet = "";
        UMask = "0077";
      };
    };
  };
}
