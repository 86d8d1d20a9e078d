# Evaluation test of the NixOS module (nix/module.nix, nix/command.nix) and the package
# (nix/package.nix) that needs no nixpkgs: a stub `lib` with just the functions the module uses
# (types check values; mkIf is resolved as the module system would), a stub `pkgs`, and the
# module evaluated for sample configurations whose command lines and service settings are
# compared with what they must be. When <nixpkgs> is on NIX_PATH, the full sample is also
# evaluated by the real NixOS module system.
#
#   nix-instantiate --eval --strict nix/tests/eval-stub.nix
#
# evaluates to { ok = true; ... } or fails naming the check that failed. scripts/check-nix
# runs it, then runs the generated command lines (`runtime`) against the real ncps binary.
# NCPS_STUB_PACKAGE (environment) replaces the fake package path in `runtime`.
let
  fakePackage = "/nix/store/00000000000000000000000000000000-ncps-0.1.0";
  runtimePackage =
    let
      p = builtins.getEnv "NCPS_STUB_PACKAGE";
    in
    if p == "" then fakePackage else p;

  # ---------------------------------------------------------------- stub lib and pkgs
  hasPrefix = pre: s: builtins.substring 0 (builtins.stringLength pre) s == pre;
  hasSuffix =
    suf: s:
    let
      ls = builtins.stringLength s;
      lf = builtins.stringLength suf;
    in
    ls >= lf && builtins.substring (ls - lf) lf s == suf;
  removePrefix =
    pre: s:
    if hasPrefix pre s then
      builtins.substring (builtins.stringLength pre) (builtins.stringLength s) s
    else
      s;
  hasInfix = needle: s: builtins.replaceStrings [ needle ] [ "" ] s != s;

  mkType = name: check: {
    _type = "option-type";
    inherit name check;
  };
  types = {
    bool = mkType "bool" builtins.isBool;
    str = mkType "string" builtins.isString;
    port = mkType "port" (v: builtins.isInt v && v >= 0 && v <= 65535);
    int = mkType "signed integer" builtins.isInt;
    path = mkType "path" (v: builtins.isPath v || (builtins.isString v && hasPrefix "/" v));
    package = mkType "package" (v: builtins.isString v || v ? outPath);
    nullOr = t: mkType "null or ${t.name}" (v: v == null || t.check v);
    listOf = t: mkType "list of ${t.name}" (v: builtins.isList v && builtins.all t.check v);
    enum = vs: mkType "one of ${builtins.toJSON vs}" (v: builtins.elem v vs);
    ints = {
      unsigned = mkType "unsigned integer" (v: builtins.isInt v && v >= 0);
      positive = mkType "positive integer" (v: builtins.isInt v && v > 0);
      between =
        lo: hi:
        mkType "integer between ${toString lo} and ${toString hi}" (
          v: builtins.isInt v && v >= lo && v <= hi
        );
    };
  };

  lib = {
    inherit types hasPrefix removePrefix;
    removeSuffix =
      suf: s:
      if hasSuffix suf s then builtins.substring 0 (builtins.stringLength s - builtins.stringLength suf) s else s;
    splitString = sep: s: builtins.filter builtins.isString (builtins.split sep s);
    last = list: builtins.elemAt list (builtins.length list - 1);
    toInt = s: builtins.fromJSON s;
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption =
      name:
      lib.mkOption {
        type = types.bool;
        default = false;
        description = "Whether to enable ${name}.";
      };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
  };

  storePath = name: text: "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" text)}-${name}";
  pkgs = {
    formats.json =
      { }:
      {
        type = mkType "JSON value" (_: true);
        generate = name: value: storePath name (builtins.toJSON value);
      };
    writeShellScript = storePath;
    callPackage = _: _: throw "the stub cannot build ncps: set services.ncps.package";
  };

  # ---------------------------------------------------------------- stub module system
  isOption = v: builtins.isAttrs v && (v._type or null) == "option";

  # The value of every declared option: the one given, else the default; type-checked.
  # Values for undeclared options are errors, as in NixOS.
  evalOptions =
    path: decls: values:
    let
      unknown = builtins.filter (n: !(decls ? ${n})) (builtins.attrNames values);
    in
    if unknown != [ ] then
      throw "${path}: no such option: ${builtins.concatStringsSep ", " unknown}"
    else
      builtins.mapAttrs (
        name: decl:
        let
          p = "${path}.${name}";
        in
        if isOption decl then
          let
            value =
              if values ? ${name} then
                values.${name}
              else if decl ? default then
                decl.default
              else
                throw "${p} has no default and is not set";
          in
          if decl.type.check value then value else throw "${p}: a ${builtins.typeOf value} value is not a ${decl.type.name}"
        else
          evalOptions p decl (values.${name} or { })
      ) decls;

  # Every declaration has a type and a description.
  declarationProblems =
    path: decls:
    builtins.concatLists (
      map (
        name:
        let
          d = decls.${name};
          p = "${path}.${name}";
        in
        if isOption d then
          (if d ? type then [ ] else [ "${p} has no type" ])
          ++ (if d ? description then [ ] else [ "${p} has no description" ])
        else
          declarationProblems p d
      ) (builtins.attrNames decls)
    );

  # mkIf resolved: a false condition removes the definition.
  skip = {
    _type = "skip";
  };
  isSkip = v: builtins.isAttrs v && (v._type or null) == "skip";
  resolve =
    v:
    if builtins.isAttrs v then
      if (v._type or null) == "if" then
        (if v.condition then resolve v.content else skip)
      else if v ? outPath then
        v
      else
        let
          r = builtins.mapAttrs (_: resolve) v;
        in
        builtins.removeAttrs r (builtins.filter (n: isSkip r.${n}) (builtins.attrNames r))
    else
      v;

  module = import ../module.nix;

  evalModule =
    values:
    let
      out = module {
        config.services.ncps = cfg;
        inherit lib pkgs;
      };
      cfg = evalOptions "services.ncps" out.options.services.ncps values;
      resolved = resolve out.config;
      config = if isSkip resolved then { } else resolved;
    in
    {
      inherit cfg config;
      decls = out.options.services.ncps;
      failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) (config.assertions or [ ]));
      service = config.systemd.services.ncps or null;
      command = import ../command.nix {
        inherit cfg;
        configFile =
          if cfg.settings == { } then null else (pkgs.formats.json { }).generate "ncps.json" cfg.settings;
        ncps = "${cfg.package}/bin/ncps";
      };
    };

  # ---------------------------------------------------------------- checks
  # Printable: functions and paths named, not converted.
  show =
    v:
    if builtins.isFunction v then
      "<function>"
    else if builtins.isPath v then
      "<path ${toString v}>"
    else if builtins.isList v then
      map show v
    else if builtins.isAttrs v then
      builtins.mapAttrs (_: show) v
    else
      v;
  check =
    name: cond: detail:
    if cond then true else throw "eval-stub: ${name} failed: ${builtins.toJSON (show detail)}";
  checkEq =
    name: got: want:
    check name (got == want) {
      inherit got want;
    };
  fails = v: !(builtins.tryEval (builtins.deepSeq v v)).success;

  keys = {
    nixos = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
    lan = "upstream-1:pqJTMfsH6L5WzGqY/k2CxhNcvn36PU3rfoAmSwHI4K4=";
    ci = "ci-1:IgR21PuJy9jJhBM8DgzUhFtE7sji/GyylPb1ff7ddsc=";
  };

  # Every option set.
  fullValues = package: {
    enable = true;
    inherit package;
    hostname = "cache.example.lan";
    storage.local = "/srv/ncps";
    database.url = "sqlite:/srv/ncps/db/db.sqlite";
    tempPath = "/var/lib/ncps-tmp";
    secretKeyPath = "/run/secrets/ncps-key";
    signNarinfo = false;
    upstream = {
      urls = [
        "https://cache.nixos.org"
        "http://upstream.lan:8080"
      ];
      publicKeys = [
        keys.nixos
        keys.lan
      ];
      dialerTimeout = "5s";
      responseHeaderTimeout = "10s";
      stallTimeout = "1m";
      negativeTtl = "0";
      lookup = "sequential";
      prefetch = true;
      netrcFile = "/run/secrets/netrc";
    };
    locks = {
      backend = "redis";
      downloadTtl = "10m";
      redisKeyPrefix = "a:lock:";
      postgresKeyPrefix = "b:lock:";
    };
    redis = {
      addrs = [
        "127.0.0.1:6379"
        "127.0.0.2:6379"
      ];
      username = "ncps";
      passwordFile = "/run/secrets/redis";
      db = 2;
      useTls = true;
    };
    server = {
      address = "::1";
      port = 8600;
    };
    openFirewall = true;
    maxSize = "100G";
    lruSchedule = "0 2 * * *";
    lruScheduleTimezone = "UTC";
    cdc = {
      enable = true;
      min = 8192;
      avg = 32768;
      max = 131072;
      zstdLevel = 3;
      lazyChunking = true;
      backgroundWorkers = 2;
      lazyZstdLevel = 9;
      deleteDelay = "1h";
      lazyRecoverySchedule = "@every 10m";
      lazyRecoveryBatchSize = 50;
      gcGrace = "2h";
    };
    uploads = {
      allowPut = true;
      allowDelete = true;
      maxUploadSize = "8G";
      requireTrustedSignature = true;
      trustedUploadKeys = [ keys.ci ];
      getTokenFile = "/run/secrets/get-token";
      putTokenFile = "/run/secrets/put-token";
    };
    prometheus.enable = true;
    logLevel = "debug";
    settings.cache.upstream.stall-timeout = "2m";
  };
  full = evalModule (fullValues fakePackage);
  fullArgs = [
    "serve"
    "--config=${(pkgs.formats.json { }).generate "ncps.json" (fullValues fakePackage).settings}"
    "--log-level=debug"
    "--prometheus-enabled=true"
    "--cache-hostname=cache.example.lan"
    "--cache-storage-local=/srv/ncps"
    "--cache-database-url=sqlite:/srv/ncps/db/db.sqlite"
    "--cache-temp-path=/var/lib/ncps-tmp"
    "--cache-sign-narinfo=false"
    "--cache-upstream-url=https://cache.nixos.org"
    "--cache-upstream-url=http://upstream.lan:8080"
    "--cache-upstream-public-key=${keys.nixos}"
    "--cache-upstream-public-key=${keys.lan}"
    "--cache-upstream-dialer-timeout=5s"
    "--cache-upstream-response-header-timeout=10s"
    "--cache-upstream-stall-timeout=1m"
    "--cache-upstream-negative-ttl=0"
    "--cache-upstream-lookup=sequential"
    "--cache-upstream-prefetch=true"
    "--cache-lock-backend=redis"
    "--cache-lock-download-ttl=10m"
    "--cache-lock-redis-key-prefix=a:lock:"
    "--cache-lock-postgres-key-prefix=b:lock:"
    "--cache-redis-addrs=127.0.0.1:6379"
    "--cache-redis-addrs=127.0.0.2:6379"
    "--cache-redis-username=ncps"
    "--cache-redis-db=2"
    "--cache-redis-use-tls=true"
    "--server-addr=[::1]:8600"
    "--cache-max-size=100G"
    "--cache-lru-schedule=0 2 * * *"
    "--cache-lru-schedule-timezone=UTC"
    "--cache-cdc-enabled=true"
    "--cache-cdc-min=8192"
    "--cache-cdc-avg=32768"
    "--cache-cdc-max=131072"
    "--cache-cdc-zstd-level=3"
    "--cache-cdc-lazy-chunking-enabled=true"
    "--cache-cdc-background-workers=2"
    "--cache-cdc-lazy-zstd-level=9"
    "--cache-cdc-delete-delay=1h"
    "--cache-cdc-lazy-recovery-schedule=@every 10m"
    "--cache-cdc-lazy-recovery-batch-size=50"
    "--cache-cdc-gc-grace=2h"
    "--cache-allow-put-verb=true"
    "--cache-allow-delete-verb=true"
    "--cache-max-upload-size=8G"
    "--cache-require-trusted-signature=true"
    "--cache-trusted-upload-key=${keys.ci}"
  ];
  fullExec = full.service.serviceConfig.ExecStart;
  fullStartScript = storePath "ncps-start" full.command.startScript;

  s3Values = package: {
    enable = true;
    inherit package;
    storage.s3 = {
      bucket = "ncps";
      endpoint = "http://127.0.0.1:3900";
      region = "garage";
      accessKeyId = "GK0123";
      secretAccessKeyFile = "/run/secrets/s3";
      forcePathStyle = true;
    };
  };
  s3 = evalModule (s3Values fakePackage);

  minimal = evalModule {
    enable = true;
    package = fakePackage;
  };
  disabled = evalModule { };

  # A configuration written for nixpkgs' own services.ncps (its option paths), and the same
  # one written with this module's: they must give the same service.
  nixpkgsStyle = evalModule {
    enable = true;
    package = fakePackage;
    cache = {
      hostName = "cache.example.lan";
      storage.local = "/srv/ncps";
      databaseURL = "sqlite:/srv/ncps/db/db.sqlite";
      tempPath = "/srv/ncps-tmp";
      upstream = {
        urls = [ "https://cache.nixos.org" ];
        publicKeys = [ keys.nixos ];
        dialerTimeout = "5s";
      };
      maxSize = "100G";
      lru.schedule = "0 2 * * *";
      allowPutVerb = true;
      cdc.enabled = true;
      lock = {
        backend = "redis";
        retry.maxAttempts = 3;
        lruTTL = "30m0s";
      };
      redis = {
        addresses = [ "127.0.0.1:6379" ];
        database = 2;
        passwordFile = "/run/secrets/redis";
        poolSize = 10;
      };
      database.pool.maxOpenConns = 0;
      database.pool.maxIdleConns = 4;
      signNarinfo = true;
    };
    netrcFile = "/run/secrets/netrc";
    server.addr = ":8600";
    logLevel = "fatal";
    analytics.reporting.enable = true;
  };
  ownStyle = evalModule {
    enable = true;
    package = fakePackage;
    hostname = "cache.example.lan";
    storage.local = "/srv/ncps";
    database.url = "sqlite:/srv/ncps/db/db.sqlite";
    tempPath = "/srv/ncps-tmp";
    upstream = {
      urls = [ "https://cache.nixos.org" ];
      publicKeys = [ keys.nixos ];
      dialerTimeout = "5s";
      netrcFile = "/run/secrets/netrc";
    };
    maxSize = "100G";
    lruSchedule = "0 2 * * *";
    uploads.allowPut = true;
    cdc.enable = true;
    locks.backend = "redis";
    redis = {
      addrs = [ "127.0.0.1:6379" ];
      db = 2;
      passwordFile = "/run/secrets/redis";
    };
    extraArgs = [ "--cache-database-pool-max-idle-conns=4" ];
    server.port = 8600;
    logLevel = "error";
  };
  hostAddr = (evalModule { enable = true; package = fakePackage; server.addr = "[::1]:8700"; }).service;
  hostAddrOwn = (evalModule { enable = true; package = fakePackage; server = { address = "::1"; port = 8700; }; }).service;
  noUpstream = evalModule {
    enable = true;
    package = fakePackage;
    upstream.urls = [ ];
    server.address = "127.0.0.1";
  };
  escaping = evalModule {
    enable = true;
    package = fakePackage;
    hostname = "a%b$c\"d";
  };
  cfgOf = values: (evalModule ({ enable = true; package = fakePackage; } // values)).cfg;
  assertionsOf = values: (evalModule ({ enable = true; package = fakePackage; } // values)).failedAssertions;

  pkg = import ../package.nix {
    lib = {
      licenses.mit = "MIT";
      platforms.linux = [ "x86_64-linux" ];
      fileset = {
        toSource = { root, fileset }: root;
        unions = builtins.head;
        difference = a: _: a;
        maybeMissing = p: p;
      };
    };
    rustPlatform.buildRustPackage = attrs: attrs;
    pkg-config = "pkg-config";
  };

  # The OCI image, built by a stub dockerTools that returns its arguments.
  image = import ../image.nix {
    dockerTools.buildLayeredImage = attrs: attrs;
    cacert = storePath "cacert" "cacert";
    ncps = {
      outPath = fakePackage;
      version = "0.1.0";
    };
  };

  # The flake's outputs, with a stub nixpkgs (attribute names and wiring only).
  flakePkgs =
    system:
    let
      names = [ "cargo" "rustc" "rustfmt" "clippy" "cargo-nextest" "nix" "sqlite" "postgresql" "mariadb" "redis" "hello" "python3" ];
    in
    builtins.listToAttrs (map (n: { name = n; value = storePath n n; }) names)
    // pkgs
    // {
      stdenv.hostPlatform.system = system;
      callPackage = path: _: {
        outPath = storePath "ncps" (toString path);
        inherit path system;
      };
      mkShell = attrs: attrs;
      testers.runNixOSTest = test: test;
      writeText = storePath;
    };
  flakeLib = lib // {
    genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
    mkDefault = content: { _type = "override"; priority = 1000; inherit content; };
    mkForce = content: { _type = "override"; priority = 50; inherit content; };
  };
  flakeFile = import ../../flake.nix;
  flake = flakeFile.outputs {
    self = flake;
    nixpkgs = {
      lib = flakeLib;
      legacyPackages = flakeLib.genAttrs [ "x86_64-linux" "aarch64-linux" ] flakePkgs;
    };
  };
  flakeModule = flake.nixosModules.default {
    lib = flakeLib;
    pkgs = flakePkgs "aarch64-linux";
  };
  # The VM test's cache machine, evaluated by the stub module system.
  vmTest = flake.checks.x86_64-linux.vm;
  vmCacheNode = vmTest.nodes.cache { pkgs = flakePkgs "x86_64-linux"; };
  vmCache = evalModule (vmCacheNode.services.ncps // { package = fakePackage; });

  checks = [
    (checkEq "nixpkgs' option paths give the same service" nixpkgsStyle.service ownStyle.service)
    (checkEq "nixpkgs' server.addr with a host" hostAddr hostAddrOwn)
    (check "nixpkgs' S3 access key file is refused with a message" (
      builtins.any (m: hasInfix "accessKeyIdPath" m) (assertionsOf { cache.storage.s3.accessKeyIdPath = "/run/secrets/id"; })
    ) "accessKeyIdPath")
    (check "nixpkgs' OpenTelemetry options become flags" (
      let
        unit = builtins.toJSON (evalModule {
          enable = true;
          package = fakePackage;
          openTelemetry = { enable = true; grpcURL = "http://127.0.0.1:4317"; };
        }).service;
      in
      hasInfix "--otel-enabled=true" unit && hasInfix "--otel-grpc-url=http://127.0.0.1:4317" unit
    ) "openTelemetry")
    (check "the module replaces nixpkgs' services.ncps" (
      (import ../module.nix { config.services.ncps = minimal.cfg; inherit lib pkgs; }).disabledModules
      == [ "services/networking/ncps.nix" ]
    ) "disabledModules")
    # The options.
    (checkEq "every option has a type and a description" (declarationProblems "services.ncps" full.decls) [ ])
    (check "a valid configuration evaluates" (!(fails (cfgOf { cdc.zstdLevel = 19; }))) "cdc.zstdLevel = 19")
    (check "a wrong type is refused" (fails (cfgOf { cdc.zstdLevel = 30; })) "cdc.zstdLevel = 30")
    (check "an unknown option is refused" (fails (cfgOf { cdc.enabled = true; })) "cdc.enabled")
    (check "a Nix path literal is refused for a secret" (fails (cfgOf { secretKeyPath = ./eval-stub.nix; })) "secretKeyPath")

    # Disabled: nothing at all.
    (checkEq "disabled module defines nothing" disabled.config { })

    # Minimal: the data directory and the listener, nothing else.
    (checkEq "minimal ExecStart" minimal.service.serviceConfig.ExecStart
      ''${fakePackage}/bin/ncps "serve" "--cache-storage-local=/var/lib/ncps" "--server-addr=:8501"'')
    (checkEq "minimal StateDirectory" minimal.service.serviceConfig.StateDirectory "ncps")
    (checkEq "minimal LoadCredential" minimal.service.serviceConfig.LoadCredential [ ])
    (checkEq "minimal ReadWritePaths" minimal.service.serviceConfig.ReadWritePaths [ ])
    (checkEq "minimal firewall untouched" (minimal.config.networking.firewall.allowedTCPPorts or [ ]) [ ])
    (checkEq "minimal assertions" minimal.failedAssertions [ ])
    (checkEq "minimal puts ncps on the PATH" minimal.config.environment.systemPackages [ fakePackage ])

    # Full: every flag, in order, through the start script (credentials are loaded).
    (checkEq "full args" full.command.args fullArgs)
    (check "full --config is the rendered settings" (hasPrefix "--config=/nix/store/" (builtins.elemAt full.command.args 1)) full.command.args)
    (check "full ExecStart runs the start script" (hasPrefix "${fullStartScript} \"serve\" " fullExec) fullExec)
    (checkEq "full ExecStart" fullExec "${fullStartScript} ${full.command.execArgs}")
    (check "full ExecStart has --cache-upstream-url" (hasInfix ''"--cache-upstream-url=http://upstream.lan:8080"'' fullExec) fullExec)
    (check "full ExecStart has --cache-cdc-enabled" (hasInfix ''"--cache-cdc-enabled=true"'' fullExec) fullExec)
    (check "full ExecStart has no secret" (!(hasInfix "/run/secrets" fullExec)) fullExec)
    (check "start script execs ncps" (hasInfix ''exec ${fakePackage}/bin/ncps "$@"'' full.command.startScript) full.command.startScript)
    (checkEq "full LoadCredential" full.service.serviceConfig.LoadCredential [
      "secret-key:/run/secrets/ncps-key"
      "netrc:/run/secrets/netrc"
      "get-token:/run/secrets/get-token"
      "put-token:/run/secrets/put-token"
      "redis-password:/run/secrets/redis"
    ])
    (checkEq "full StateDirectory" full.service.serviceConfig.StateDirectory "ncps ncps-tmp")
    (checkEq "full ReadWritePaths" full.service.serviceConfig.ReadWritePaths [ "/srv/ncps" ])
    (checkEq "full firewall" full.config.networking.firewall.allowedTCPPorts [ 8600 ])
    (checkEq "full assertions" full.failedAssertions [ ])

    # The service's settings.
    (checkEq "service ordering" {
      inherit (full.service) after wants wantedBy;
    } {
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      wantedBy = [ "multi-user.target" ];
    })
    (checkEq "hardening" (builtins.intersectAttrs {
      DynamicUser = null;
      Restart = null;
      ProtectSystem = null;
      ProtectHome = null;
      NoNewPrivileges = null;
      PrivateTmp = null;
      PrivateDevices = null;
      ProtectKernelTunables = null;
      ProtectKernelModules = null;
      ProtectKernelLogs = null;
      ProtectControlGroups = null;
      RestrictAddressFamilies = null;
      RestrictNamespaces = null;
      LockPersonality = null;
      MemoryDenyWriteExecute = null;
      SystemCallFilter = null;
      CapabilityBoundingSet = null;
      UMask = null;
    } minimal.service.serviceConfig) {
      DynamicUser = true;
      Restart = "on-failure";
      ProtectSystem = "strict";
      ProtectHome = true;
      NoNewPrivileges = true;
      PrivateTmp = true;
      PrivateDevices = true;
      ProtectKernelTunables = true;
      ProtectKernelModules = true;
      ProtectKernelLogs = true;
      ProtectControlGroups = true;
      RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
      RestrictNamespaces = true;
      LockPersonality = true;
      MemoryDenyWriteExecute = true;
      SystemCallFilter = [ "@system-service" "~@privileged" ];
      CapabilityBoundingSet = "";
      UMask = "0077";
    })

    # S3: flags, and the secret as a credential.
    (checkEq "s3 args" (builtins.filter (hasPrefix "--cache-storage-s3") s3.command.args) [
      "--cache-storage-s3-bucket=ncps"
      "--cache-storage-s3-endpoint=http://127.0.0.1:3900"
      "--cache-storage-s3-region=garage"
      "--cache-storage-s3-access-key-id=GK0123"
      "--cache-storage-s3-force-path-style=true"
    ])
    (checkEq "s3 LoadCredential" s3.service.serviceConfig.LoadCredential [ "s3-secret-access-key:/run/secrets/s3" ])

    # No upstream, an IPv4 address.
    (check "no upstream is an empty --cache-upstream-url" (builtins.elem "--cache-upstream-url=" noUpstream.command.args) noUpstream.command.args)
    (check "no upstream gives no key" (!(builtins.any (hasPrefix "--cache-upstream-public-key") noUpstream.command.args)) noUpstream.command.args)
    (check "IPv4 address" (builtins.elem "--server-addr=127.0.0.1:8501" noUpstream.command.args) noUpstream.command.args)
    (checkEq "no upstream assertions" noUpstream.failedAssertions [ ])

    # systemd quoting: % and $ stay literal, quotes are escaped.
    (check "systemd escaping" (hasInfix ''"--cache-hostname=a%%b$$c\"d"'' escaping.service.serviceConfig.ExecStart) escaping.service.serviceConfig.ExecStart)

    # Assertions catch configurations ncps would refuse.
    (check "lruSchedule needs maxSize" (assertionsOf { lruSchedule = "@daily"; } != [ ]) "lruSchedule")
    (check "upstream urls need keys" (assertionsOf { upstream.urls = [ "http://x" ]; } != [ ]) "upstream.urls")
    (check "required signature needs keys" (assertionsOf { uploads.requireTrustedSignature = true; } != [ ]) "uploads")
    (check "one database URL" (assertionsOf { database.url = "sqlite:/x"; database.urlFile = "/run/secrets/db"; } != [ ]) "database")
    (checkEq "database URL file" (evalModule { enable = true; package = fakePackage; database.urlFile = "/run/secrets/db"; }).service.serviceConfig.LoadCredential [ "database-url:/run/secrets/db" ])
    (check "redis locks need addresses" (assertionsOf { locks.backend = "redis"; } != [ ]) "locks.backend")
    (check "secret paths are absolute" (assertionsOf { uploads.getTokenFile = "token"; } != [ ]) "getTokenFile")

    # The flake.
    (checkEq "flake outputs" (builtins.attrNames flake) [ "checks" "devShells" "nixosModules" "overlays" "packages" ])
    (checkEq "flake systems" (builtins.attrNames flake.packages) [ "aarch64-linux" "x86_64-linux" ])
    (checkEq "flake package" flake.packages.x86_64-linux.default.path ../package.nix)
    (checkEq "flake image" flake.packages.x86_64-linux.image.path ../image.nix)
    (checkEq "image entrypoint and user" {
      inherit (image.config) Entrypoint User Volumes;
      tag = image.tag;
    } {
      Entrypoint = [ "${fakePackage}/bin/ncps" ];
      User = "65534:65534";
      Volumes."/storage" = { };
      tag = "0.1.0";
    })
    (check "image trusts CA certificates" (builtins.elem "SSL_CERT_FILE=${storePath "cacert" "cacert"}/etc/ssl/certs/ca-bundle.crt" image.config.Env) image.config.Env)
    (checkEq "flake checks" (builtins.attrNames flake.checks.aarch64-linux) [ "package" "vm" ])
    (checkEq "flake dev shell" flake.devShells.x86_64-linux.default.packages (map (n: storePath n n) [ "cargo" "rustc" "rustfmt" "clippy" "cargo-nextest" "nix" "sqlite" "postgresql" "mariadb" "redis" ]))
    (checkEq "flake module imports the module" flakeModule.imports [ ../module.nix ])
    (checkEq "flake module's package is the flake's" flakeModule.services.ncps.package {
      _type = "override";
      priority = 1000;
      content = flake.packages.aarch64-linux.default;
    })
    (check "flake input" (builtins.isString flakeFile.inputs.nixpkgs.url) flakeFile.inputs)

    # The VM test's configuration is valid for the module.
    (checkEq "vm test imports the flake's module"
      (map (m: (m { lib = flakeLib; pkgs = flakePkgs "x86_64-linux"; }).imports) vmCacheNode.imports)
      [ [ ../module.nix ] ])
    (checkEq "vm test assertions" vmCache.failedAssertions [ ])
    (checkEq "vm test credentials" (map (c: c.name) vmCache.command.credentials) [ "secret-key" "get-token" ])
    (check "vm test substitutes through ncps" (hasInfix "nix-store --realise" vmTest.testScript) vmTest.testScript)

    # The package.
    (checkEq "package" {
      inherit (pkg) pname version cargoBuildFlags;
      inherit (pkg.cargoLock) lockFile;
      inherit (pkg.meta) mainProgram license;
    } {
      pname = "ncps";
      version = (builtins.fromTOML (builtins.readFile ../../Cargo.toml)).workspace.package.version;
      cargoBuildFlags = [ "-p" "ncps" ];
      lockFile = ../../Cargo.lock;
      mainProgram = "ncps";
      license = "MIT";
    })
    (check "package installs dbmate-ncps for nixpkgs' module" (
      builtins.match "install -Dm755 [^ ]*-dbmate-ncps.sh [$]out/bin/dbmate-ncps[[:space:]]substituteInPlace [$]out/bin/dbmate-ncps --replace-fail '@ncps@' \"[$]out/bin/ncps\"[[:space:]]*" pkg.postInstall != null
    ) pkg.postInstall)
    (check "package tests only unit tests" (builtins.elem "--lib" pkg.cargoTestFlags && builtins.elem "--bins" pkg.cargoTestFlags) pkg.cargoTestFlags)
  ];

  # ---------------------------------------------------------------- the real module system
  nixpkgs = builtins.tryEval <nixpkgs>;
  realNixos =
    if !nixpkgs.success then
      "skipped: no <nixpkgs> on NIX_PATH"
    else
      let
        eval = import (nixpkgs.value + "/nixos/lib/eval-config.nix") {
          system = builtins.currentSystem;
          modules = [
            ../module.nix
            {
              services.ncps = fullValues fakePackage;
              boot.isContainer = true;
              system.stateVersion = "25.05";
            }
          ];
        };
        svc = eval.config.systemd.services.ncps;
        exec = svc.serviceConfig.ExecStart;
        ours = builtins.filter (a: !a.assertion && hasPrefix "services.ncps" a.message) eval.config.assertions;
      in
      builtins.deepSeq [
        (check "nixos: ExecStart" (hasSuffix " ${full.command.execArgs}" exec) exec)
        (checkEq "nixos: LoadCredential" svc.serviceConfig.LoadCredential full.service.serviceConfig.LoadCredential)
        (check "nixos: firewall" (builtins.elem 8600 eval.config.networking.firewall.allowedTCPPorts) "8600")
        (checkEq "nixos: assertions" (map (a: a.message) ours) [ ])
      ] "checked with the real NixOS module system";

  # Command lines for scripts/check-nix to run against the real binary, with the package path
  # from NCPS_STUB_PACKAGE.
  runtimeOf =
    values:
    let
      e = evalModule values;
    in
    {
      inherit (e.command) shellArgs startScript;
    };
in
builtins.deepSeq checks {
  ok = true;
  checked = builtins.length checks;
  nixos = realNixos;
  runtime = {
    full = runtimeOf (fullValues runtimePackage);
    s3 = runtimeOf (s3Values runtimePackage);
  };
}
