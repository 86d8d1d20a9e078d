# The option paths of nixpkgs' own `services.ncps` module (written for the Go ncps), accepted
# by nix/module.nix so that an existing configuration evaluates unchanged: `cache.hostName`,
# `cache.upstream.urls`, `cache.storage.local`, `netrcFile`, `server.addr`, … Each is declared
# here with no default (null) and folded into this module's own option by `fold`: a value set
# under the nixpkgs name wins over this module's default. Settings of the Go ncps that mean
# nothing here (analytics, lock retries, Redis pool size) are accepted and ignored, as the
# binary ignores them.
{ lib }:

let
  inherit (lib) mkOption types;

  # A nixpkgs option: any value its own type allows, null when unset.
  alias =
    type: ours:
    mkOption {
      type = types.nullOr type;
      default = null;
      description = "nixpkgs' name for ${ours} (accepted so that configurations written for nixpkgs' module evaluate).";
    };
  ignored =
    type: why:
    mkOption {
      type = types.nullOr type;
      default = null;
      description = "A setting of nixpkgs' module for the Go ncps; accepted and ignored: ${why}.";
    };
  retryWhy = "lock operations fail at once with 503 + Retry-After here";
  poolFlag = flag: n: if n == null || n == 0 then [ ] else [ "--${flag}=${toString n}" ];
in
{
  options = {
    cache = {
      hostName = alias types.str "`hostname`";
      databaseURL = alias types.str "`database.url`";
      databaseURLFile = alias types.path "`database.urlFile`";
      database.pool = {
        maxOpenConns = alias types.int "`--cache-database-pool-max-open-conns` (0: the engine's default)";
        maxIdleConns = alias types.int "`--cache-database-pool-max-idle-conns` (0: the engine's default)";
      };
      allowPutVerb = alias types.bool "`uploads.allowPut`";
      allowDeleteVerb = alias types.bool "`uploads.allowDelete`";
      cdc = {
        enabled = alias types.bool "`cdc.enable`";
        min = alias types.int "`cdc.min`";
        avg = alias types.int "`cdc.avg`";
        max = alias types.int "`cdc.max`";
      };
      maxSize = alias types.str "`maxSize`";
      lru = {
        schedule = alias types.str "`lruSchedule`";
        scheduleTimeZone = alias types.str "`lruScheduleTimezone`";
      };
      lock = {
        backend = alias types.str "`locks.backend`";
        redisKeyPrefix = alias types.str "`locks.redisKeyPrefix`";
        downloadTTL = alias types.str "`locks.downloadTtl`";
        lruTTL = ignored types.str "the eviction lock is renewed while eviction runs";
        retry = {
          maxAttempts = ignored types.int retryWhy;
          initialDelay = ignored types.str retryWhy;
          maxDelay = ignored types.str retryWhy;
          jitter = ignored types.bool retryWhy;
        };
        allowDegradedMode = ignored types.bool "with the lock service down, downloads answer 503 and stored paths are still served";
      };
      redis = {
        addresses = alias (types.listOf types.str) "`redis.addrs`";
        database = alias types.int "`redis.db`";
        username = alias types.str "`redis.username`";
        password = ignored types.str "refused by an assertion: a password must not enter the Nix store; give `passwordFile`";
        passwordFile = alias types.path "`redis.passwordFile`";
        poolSize = ignored types.int "locks use one multiplexed Redis connection";
        useTLS = alias types.bool "`redis.useTls`";
      };
      secretKeyPath = alias types.path "`secretKeyPath`";
      signNarinfo = alias types.bool "`signNarinfo`";
      storage = {
        local = alias types.path "`storage.local`";
        s3 = {
          bucket = alias types.str "`storage.s3.bucket`";
          endpoint = alias types.str "`storage.s3.endpoint`";
          region = alias types.str "`storage.s3.region`";
          forcePathStyle = alias types.bool "`storage.s3.forcePathStyle`";
          accessKeyIdPath = alias types.path "`storage.s3.accessKeyId` (read from the file at evaluation is not possible: set `storage.s3.accessKeyId`)";
          secretAccessKeyPath = alias types.path "`storage.s3.secretAccessKeyFile`";
        };
      };
      tempPath = alias types.path "`tempPath`";
      upstream = {
        urls = alias (types.listOf types.str) "`upstream.urls`";
        publicKeys = alias (types.listOf types.str) "`upstream.publicKeys`";
        dialerTimeout = alias types.str "`upstream.dialerTimeout`";
        responseHeaderTimeout = alias types.str "`upstream.responseHeaderTimeout`";
      };
    };
    netrcFile = alias types.path "`upstream.netrcFile`";
    analytics.reporting = {
      enable = ignored types.bool "this ncps reports no analytics anywhere";
      samples = ignored types.bool "this ncps reports no analytics anywhere";
    };
    openTelemetry = {
      enable = alias types.bool "`--otel-enabled` (passed in `extraArgs`)";
      grpcURL = alias types.str "`--otel-grpc-url` (passed in `extraArgs`)";
    };
  };

  # `server.addr` (`":8501"`, `"host:port"`, `"[::1]:8501"`), declared beside this module's
  # `server.address` and `server.port`.
  serverAddr = alias types.str "`server.address` and `server.port`";

  # This module's configuration with every nixpkgs value given folded in.
  fold =
    declared:
    let
      go = declared.cache;
      pick = given: ours: if given == null then ours else given;
      str = v: if v == null then null else toString v;
      # ":8501" → { address = null; port = 8501; }; "[::1]:80" → { address = "::1"; … }.
      addr = declared.server.addr;
      lastColon =
        let
          parts = lib.splitString ":" addr;
        in
        builtins.length parts - 1;
      portText = lib.last (lib.splitString ":" addr);
      hostText = lib.removeSuffix ":${portText}" addr;
      host = lib.removeSuffix "]" (lib.removePrefix "[" hostText);
      server =
        if addr == null then
          declared.server
        else
          declared.server
          // {
            address = if host == "" || lastColon < 1 then null else host;
            port = lib.toInt portText;
          };
    in
    declared
    // {
      hostname = pick go.hostName declared.hostname;
      storage = declared.storage // {
        local = pick (str go.storage.local) declared.storage.local;
        s3 = declared.storage.s3 // {
          bucket = pick go.storage.s3.bucket declared.storage.s3.bucket;
          endpoint = pick go.storage.s3.endpoint declared.storage.s3.endpoint;
          region = pick go.storage.s3.region declared.storage.s3.region;
          forcePathStyle = pick go.storage.s3.forcePathStyle declared.storage.s3.forcePathStyle;
          secretAccessKeyFile = pick (str go.storage.s3.secretAccessKeyPath) declared.storage.s3.secretAccessKeyFile;
        };
      };
      database = declared.database // {
        # nixpkgs' module defaults the URL to SQLite in the data directory, as ncps does.
        url = pick go.databaseURL declared.database.url;
        urlFile = pick (str go.databaseURLFile) declared.database.urlFile;
      };
      tempPath = pick (str go.tempPath) declared.tempPath;
      secretKeyPath = pick (str go.secretKeyPath) declared.secretKeyPath;
      signNarinfo = pick go.signNarinfo declared.signNarinfo;
      upstream = declared.upstream // {
        urls = pick go.upstream.urls declared.upstream.urls;
        publicKeys = pick go.upstream.publicKeys declared.upstream.publicKeys;
        dialerTimeout = pick go.upstream.dialerTimeout declared.upstream.dialerTimeout;
        responseHeaderTimeout = pick go.upstream.responseHeaderTimeout declared.upstream.responseHeaderTimeout;
        netrcFile = pick (str declared.netrcFile) declared.upstream.netrcFile;
      };
      locks = declared.locks // {
        backend = pick go.lock.backend declared.locks.backend;
        downloadTtl = pick go.lock.downloadTTL declared.locks.downloadTtl;
        redisKeyPrefix = pick go.lock.redisKeyPrefix declared.locks.redisKeyPrefix;
      };
      redis = declared.redis // {
        addrs = pick go.redis.addresses declared.redis.addrs;
        db = pick go.redis.database declared.redis.db;
        username = pick go.redis.username declared.redis.username;
        passwordFile = pick (str go.redis.passwordFile) declared.redis.passwordFile;
        useTls = pick go.redis.useTLS declared.redis.useTls;
      };
      inherit server;
      logLevel =
        if builtins.elem declared.logLevel [
          "fatal"
          "panic"
        ] then
          "error"
        else
          declared.logLevel;
      maxSize = pick go.maxSize declared.maxSize;
      lruSchedule = pick go.lru.schedule declared.lruSchedule;
      lruScheduleTimezone = pick go.lru.scheduleTimeZone declared.lruScheduleTimezone;
      cdc = declared.cdc // {
        enable = pick go.cdc.enabled declared.cdc.enable;
        min = pick go.cdc.min declared.cdc.min;
        avg = pick go.cdc.avg declared.cdc.avg;
        max = pick go.cdc.max declared.cdc.max;
      };
      uploads = declared.uploads // {
        allowPut = pick go.allowPutVerb declared.uploads.allowPut;
        allowDelete = pick go.allowDeleteVerb declared.uploads.allowDelete;
      };
      # Pool sizes have no option of this module's own: passed as flags when not the default.
      extraArgs =
        declared.extraArgs
        ++ poolFlag "cache-database-pool-max-open-conns" go.database.pool.maxOpenConns
        ++ poolFlag "cache-database-pool-max-idle-conns" go.database.pool.maxIdleConns
        ++ (if declared.openTelemetry.enable == true then [ "--otel-enabled=true" ] else [ ])
        ++ (
          if declared.openTelemetry.grpcURL == null then
            [ ]
          else
            [ "--otel-grpc-url=${declared.openTelemetry.grpcURL}" ]
        );
    };
}
