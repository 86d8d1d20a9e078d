# How the NixOS module starts ncps, as pure data: the `ncps serve` arguments, the systemd
# credentials to load and the start script that hands them to ncps. No lib, no pkgs: the module
# (nix/module.nix) and its evaluation test (nix/tests/eval-stub.nix) both import this file.
#
#   cfg         the evaluated `services.ncps` options
#   configFile  the rendered `settings` (a path string), or null when `settings` is empty
#   ncps        the ncps executable (a path string)
{
  cfg,
  configFile,
  ncps,
}:

let
  str = v: if builtins.isBool v then (if v then "true" else "false") else toString v;

  # One `--name=value` word (a single word even when the value is empty or has spaces), or
  # nothing for null: ncps's own default, or the config file's value, then applies.
  flag = name: value: if value == null then [ ] else [ "--${name}=${str value}" ];

  # A repeatable flag, once per value; nothing for null.
  flags = name: values: if values == null then [ ] else map (v: "--${name}=${v}") values;

  # A boolean flag, given only when it differs from ncps's default.
  bool =
    name: default: value:
    if value == default then [ ] else [ "--${name}=${str value}" ];

  # `server.address` + `server.port` as ncps's host:port; ":PORT" is every interface.
  serverAddr =
    let
      a = cfg.server.address;
      isV6 = a != null && builtins.match ".*:.*" a != null && builtins.substring 0 1 a != "[";
    in
    if a == null || a == "" then
      ":${toString cfg.server.port}"
    else if isV6 then
      "[${a}]:${toString cfg.server.port}"
    else
      "${a}:${toString cfg.server.port}";

  up = cfg.upstream;
  cdc = cfg.cdc;
  u = cfg.uploads;
  s3 = cfg.storage.s3;
  locks = cfg.locks;
  redis = cfg.redis;

  # Secrets never go on the command line (every local user can read it in /proc) nor into the
  # Nix store: systemd copies each file into the service's private credentials directory
  # (LoadCredential=), and the start script passes paths and tokens on to ncps.
  credentials = builtins.filter (c: c.path != null) [
    {
      name = "secret-key";
      path = cfg.secretKeyPath;
    }
    {
      name = "netrc";
      path = up.netrcFile;
    }
    {
      name = "get-token";
      path = u.getTokenFile;
    }
    {
      name = "put-token";
      path = u.putTokenFile;
    }
    {
      name = "s3-secret-access-key";
      path = s3.secretAccessKeyFile;
    }
    {
      name = "redis-password";
      path = redis.passwordFile;
    }
    {
      name = "database-url";
      path = cfg.database.urlFile;
    }
  ];
in
rec {
  inherit credentials;

  # systemd LoadCredential= entries, "NAME:PATH".
  loadCredential = map (c: "${c.name}:${c.path}") credentials;

  # The arguments after the executable.
  args = builtins.concatLists [
    [ "serve" ]
    # Global flags (ncps accepts them after the subcommand too).
    (flag "config" configFile)
    (flag "log-level" cfg.logLevel)
    (bool "prometheus-enabled" false cfg.prometheus.enable)
    # Storage and database. The data directory is always given: the module owns it.
    (flag "cache-hostname" cfg.hostname)
    (flag "cache-storage-local" cfg.storage.local)
    (flag "cache-storage-s3-bucket" s3.bucket)
    (flag "cache-storage-s3-endpoint" s3.endpoint)
    (flag "cache-storage-s3-region" s3.region)
    (flag "cache-storage-s3-access-key-id" s3.accessKeyId)
    (bool "cache-storage-s3-force-path-style" false s3.forcePathStyle)
    (flag "cache-database-url" cfg.database.url)
    (flag "cache-temp-path" cfg.tempPath)
    (bool "cache-sign-narinfo" true cfg.signNarinfo)
    # Upstreams. An empty list is "no upstream at all" (`--cache-upstream-url=`).
    (if up.urls == [ ] then [ "--cache-upstream-url=" ] else flags "cache-upstream-url" up.urls)
    (flags "cache-upstream-public-key" up.publicKeys)
    (flag "cache-upstream-dialer-timeout" up.dialerTimeout)
    (flag "cache-upstream-response-header-timeout" up.responseHeaderTimeout)
    (flag "cache-upstream-stall-timeout" up.stallTimeout)
    (flag "cache-upstream-negative-ttl" up.negativeTtl)
    (flag "cache-upstream-lookup" up.lookup)
    (bool "cache-upstream-prefetch" false up.prefetch)
    # Locks shared by several replicas.
    (flag "cache-lock-backend" locks.backend)
    (flag "cache-lock-download-ttl" locks.downloadTtl)
    (flag "cache-lock-redis-key-prefix" locks.redisKeyPrefix)
    (flag "cache-lock-postgres-key-prefix" locks.postgresKeyPrefix)
    (flags "cache-redis-addrs" redis.addrs)
    (flag "cache-redis-username" redis.username)
    (flag "cache-redis-db" redis.db)
    (bool "cache-redis-use-tls" false redis.useTls)
    # Listener.
    [ "--server-addr=${serverAddr}" ]
    # Size limit and LRU eviction.
    (flag "cache-max-size" cfg.maxSize)
    (flag "cache-lru-schedule" cfg.lruSchedule)
    (flag "cache-lru-schedule-timezone" cfg.lruScheduleTimezone)
    # Content-defined chunking.
    (bool "cache-cdc-enabled" false cdc.enable)
    (flag "cache-cdc-min" cdc.min)
    (flag "cache-cdc-avg" cdc.avg)
    (flag "cache-cdc-max" cdc.max)
    (flag "cache-cdc-zstd-level" cdc.zstdLevel)
    (bool "cache-cdc-lazy-chunking-enabled" false cdc.lazyChunking)
    (flag "cache-cdc-background-workers" cdc.backgroundWorkers)
    (flag "cache-cdc-lazy-zstd-level" cdc.lazyZstdLevel)
    (flag "cache-cdc-delete-delay" cdc.deleteDelay)
    (flag "cache-cdc-lazy-recovery-schedule" cdc.lazyRecoverySchedule)
    (flag "cache-cdc-lazy-recovery-batch-size" cdc.lazyRecoveryBatchSize)
    (flag "cache-cdc-gc-grace" cdc.gcGrace)
    # Uploads and access.
    (bool "cache-allow-put-verb" false u.allowPut)
    (bool "cache-allow-delete-verb" false u.allowDelete)
    (flag "cache-max-upload-size" u.maxUploadSize)
    (bool "cache-require-trusted-signature" false u.requireTrustedSignature)
    (flags "cache-trusted-upload-key" u.trustedUploadKeys)
    cfg.extraArgs
  ];

  # Whether the start script is needed (it is only when a credential is loaded).
  needsStartScript = credentials != [ ];

  # Reads the credentials systemd loaded and execs ncps with "$@" (the args above) plus the
  # credential paths; tokens and passwords go through ncps's environment variables.
  startScript = ''
    set -euo pipefail
    creds="''${CREDENTIALS_DIRECTORY:?ncps-start runs under systemd with LoadCredential=}"
    extra=()
    if [ -e "$creds/secret-key" ]; then
      extra+=("--cache-secret-key-path=$creds/secret-key")
    fi
    if [ -e "$creds/netrc" ]; then
      extra+=("--netrc-file=$creds/netrc")
    fi
    if [ -e "$creds/get-token" ]; then
      CACHE_GET_TOKEN="$(< "$creds/get-token")"
      export CACHE_GET_TOKEN
    fi
    if [ -e "$creds/put-token" ]; then
      CACHE_PUT_TOKEN="$(< "$creds/put-token")"
      export CACHE_PUT_TOKEN
    fi
    if [ -e "$creds/s3-secret-access-key" ]; then
      CACHE_STORAGE_S3_SECRET_ACCESS_KEY="$(< "$creds/s3-secret-access-key")"
      export CACHE_STORAGE_S3_SECRET_ACCESS_KEY
    fi
    if [ -e "$creds/database-url" ]; then
      CACHE_DATABASE_URL="$(< "$creds/database-url")"
      export CACHE_DATABASE_URL
    fi
    if [ -e "$creds/redis-password" ]; then
      CACHE_REDIS_PASSWORD="$(< "$creds/redis-password")"
      export CACHE_REDIS_PASSWORD
    fi
    exec ${ncps} "$@" "''${extra[@]}"
  '';

  # systemd's ExecStart= quoting: each word in double quotes (C escapes, as JSON writes them),
  # with "%" (specifiers) and "$" (environment variables) doubled so they stay literal.
  escapeArg = arg: builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON arg);
  execArgs = builtins.concatStringsSep " " (map escapeArg args);

  # POSIX shell quoting of the same words (used by scripts/check-nix to run them).
  shellArgs = builtins.concatStringsSep " " (
    map (a: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] a + "'") args
  );
}
