# NixOS module for nixpush: a post-build-hook that hands every built path to
# a socket-activated, hardened daemon which signs it and pushes its closure to
# an S3 bucket or a file:// binary cache; plus a consumer side for machines
# that only read the cache.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf mkMerge types optional optionals optionalAttrs
    escapeShellArg escapeShellArgs concatStringsSep hasPrefix hasInfix literalExpression;

  cfg = config.services.nixpush;

  stateDir = "/var/lib/nixpush";
  spoolDir = "${stateDir}/spool";
  socket = "/run/nixpush/nixpush.sock";

  # An s3:// URI gets profile= when the profile option is set and the URI
  # does not name one itself.
  withProfile = profile: uri:
    if profile != null && hasPrefix "s3://" uri && !(hasInfix "profile=" uri)
    then uri + (if hasInfix "?" uri then "&" else "?") + "profile=${profile}"
    else uri;
  storeUri = withProfile cfg.profile cfg.storeUri;

  # gc works on the bucket with credentials of its own (it may delete;
  # builders may not), from a oneshot service its timer starts.
  gcStoreUri = withProfile cfg.gc.profile cfg.gc.storeUri;
  # A file:// cache belongs to the daemon's user: gc runs as it, allowed to
  # write there; an S3 one needs no local user of its own.
  gcFileDir = if hasPrefix "file://" cfg.gc.storeUri then lib.removePrefix "file://" cfg.gc.storeUri else null;
  gcCacheDir = "nixpush-gc";
  bucketArgs = [ "--store-uri" gcStoreUri ] ++ optionals (cfg.caCertificate != null) [ "--ca-certificate" "%d/ca.pem" ];
  pinCommands = lib.mapAttrsToList (name: path:
    "${cfg.package}/bin/nixpush pin ${escapeShellArgs (bucketArgs ++ [ name (toString path) ])}") cfg.pins;
  gcArgs = [ "gc" ] ++ bucketArgs ++ [ "--older-than" cfg.gc.olderThan "--grace" cfg.gc.grace "--sweep-window" cfg.gc.sweepWindow ]
    ++ cfg.gc.extraArgs;

  # The duration options as nixpush reads them, in nanoseconds (null for
  # a string it refuses), for the assertions that keep the daemon's and
  # gc's settings in step (docs/gc-protocol.md).
  durations = import ./durations.nix;
  trust = durations.go cfg.trustCacheFor;
  maxSweepWait = durations.go cfg.maxSweepWait;
  olderThan = durations.age cfg.gc.olderThan;
  grace = durations.age cfg.gc.grace;
  sweepWindow = durations.go cfg.gc.sweepWindow;
  goWant = "a Go duration of 0s or more, such as 1h, 90m or 10s (hours, not days: 48h)";
  ageWant = "whole days and/or a Go duration, 0s or more, such as 30d, 36h or 1d12h";
  readable = option: value: parsed: want: {
    assertion = parsed != null;
    message = "services.nixpush.${option} = ${builtins.toJSON value} is not a duration nixpush reads: want ${want}";
  };
  # The upload cap and its time-of-day windows, checked as nixpush reads
  # them (uploader.ParseRateSchedule) so a typo fails the build, not the
  # service: a rate is a number with an optional unit, or unlimited/none;
  # a window HH:MM-HH:MM (to 24:00; an end before the start crosses
  # midnight); windows must not overlap.
  rateRe = "(unlimited|none|[0-9]+([.][0-9]+)?[ ]*(KiB|MiB|GiB|KB|MB|GB|K|M|G|B)?(/s)?)";
  rateOk = r: builtins.isInt r && r >= 0 || builtins.isString r && builtins.match rateRe r != null;
  clockRe = "([01]?[0-9]|2[0-3]):([0-5][0-9])";
  # A window as minutes after midnight, or null when nixpush would refuse it.
  parseWindow = w:
    let
      m = builtins.match "${clockRe}-(${clockRe}|24:00)" w;
      mins = h: mm: builtins.fromJSON (lib.removePrefix "0" h) * 60 + builtins.fromJSON (lib.removePrefix "0" mm);
      from = mins (builtins.elemAt m 0) (builtins.elemAt m 1);
      to = if builtins.elemAt m 2 == "24:00" then 0 else mins (builtins.elemAt m 3) (builtins.elemAt m 4);
    in if m == null || from == to then null else { inherit from to; };
  contains = w: m: if w.from < w.to then w.from <= m && m < w.to else m >= w.from || m < w.to;
  windows = lib.mapAttrsToList (name: rate: { inherit name rate; span = parseWindow name; }) cfg.uploadRateSchedule;
  badWindows = builtins.filter (w: w.span == null) windows;
  badRates = builtins.filter (w: !(rateOk w.rate)) windows;
  goodWindows = builtins.filter (w: w.span != null) windows;
  overlaps = lib.concatLists (lib.imap0 (i: a: map (b: "${a.name} and ${b.name}")
    (builtins.filter (b: contains a.span b.span.from || contains b.span a.span.from) (lib.drop (i + 1) goodWindows))) goodWindows);
  rateFlag = concatStringsSep ", " ([ (toString cfg.maxUploadRate) ]
    ++ lib.mapAttrsToList (w: r: "${w}=${toString r}") cfg.uploadRateSchedule);
  rateAssertions = [{
    assertion = rateOk cfg.maxUploadRate;
    message = "services.nixpush.maxUploadRate = ${builtins.toJSON cfg.maxUploadRate} is not a rate nixpush reads: want bytes a second such as \"20MiB\", \"2.5MB\" or 0 (put time-of-day windows in uploadRateSchedule)";
  } {
    assertion = badWindows == [ ];
    message = "services.nixpush.uploadRateSchedule: ${concatStringsSep ", " (map (w: builtins.toJSON w.name) badWindows)} is not a window nixpush reads: want HH:MM-HH:MM in 24-hour time, such as \"00:00-07:00\" or \"22:00-06:00\"";
  } {
    assertion = badRates == [ ];
    message = "services.nixpush.uploadRateSchedule: ${concatStringsSep ", " (map (w: "${w.name} = ${builtins.toJSON w.rate}") badRates)} is not a rate nixpush reads: want bytes a second such as \"50MiB\", or \"unlimited\"";
  } {
    assertion = overlaps == [ ];
    message = "services.nixpush.uploadRateSchedule: windows ${concatStringsSep ", " overlaps} overlap; give each minute of the day one rate";
  }];

  # A flag in extraArgs that an option sets would override the option,
  # unchecked by the assertions: one assertion per such flag.
  notInExtraArgs = option: extra: flags: lib.mapAttrsToList (flag: setting: {
    assertion = !(lib.any (a: builtins.match "--?${flag}(=.*)?" a != null) extra);
    message = "services.nixpush.${option} passes --${flag}: set services.nixpush.${setting} instead";
  }) flags;

  # The daemon's hardening, shared by the gc service. Both read /nix/store,
  # talk to S3 and (the daemon) to nix-daemon's socket and their own.
  hardening = {
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    DevicePolicy = "closed";
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    RemoveIPC = true;
    KeyringMode = "private";
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
    SystemCallErrorNumber = "EPERM";
    UMask = "0027";
  };

  # Nix runs the post-build-hook without arguments, as root under nix-daemon,
  # after every build: the binary itself, no shell in front of it. Its
  # built-in socket and spool paths are the ones above (a test in
  # cmd/nixpush-hook keeps the two in step).
  hook = "${cfg.package}/bin/nixpush-hook";

  daemonArgs = [
    "daemon"
    "--socket" socket
    "--state-dir" stateDir
    "--spool-dir" spoolDir
    "--store-uri" storeUri
  ] ++ lib.concatMap (k: [ "--secret-key-file" "%d/${k.name}" ]) keyCredentials ++ [
    "--compression" cfg.compression
    "--jobs" (toString cfg.jobs)
    "--socket-group" cfg.socketGroup
    "--log-format" "journald"
    "--upload-logs=${lib.boolToString cfg.uploadLogs}"
    "--write-nar-listing=${lib.boolToString cfg.writeNarListing}"
    "--trust-cache-for" cfg.trustCacheFor
    "--max-sweep-wait" cfg.maxSweepWait
    "--max-upload-rate" rateFlag
  ] ++ optionals (cfg.caCertificate != null) [ "--ca-certificate" "%d/ca.pem" ]
    ++ optionals (cfg.metricsListen != null) [ "--metrics-listen" cfg.metricsListen ]
    ++ lib.concatMap (re: [ "--exclude" re ]) cfg.exclude
    ++ lib.concatMap (k: [ "--skip-signed-by" k ]) cfg.skipSignedBy
    ++ cfg.extraArgs;

  # Signing keys, each passed through LoadCredential: the first as
  # secret-key (as before there were several), the others as secret-key-N.
  secretKeyFiles = optional (cfg.secretKeyFile != null) cfg.secretKeyFile ++ cfg.secretKeyFiles;
  keyCredentials = lib.imap0 (i: f: {
    name = if i == 0 then "secret-key" else "secret-key-${toString i}";
    file = f;
  }) secretKeyFiles;

  pushSystem = "${cfg.package}/bin/nixpush push --socket ${socket} /nix/var/nix/profiles/system";
in
{
  options.services.nixpush = {
    enable = mkEnableOption "nixpush, which pushes every path this machine builds to a signed Nix binary cache";

    package = mkOption {
      type = types.package;
      default = pkgs.nixpush or (pkgs.callPackage ../package.nix { });
      defaultText = literalExpression "pkgs.nixpush";
      description = "The nixpush package.";
      example = literalExpression "inputs.nixpush.packages.\${pkgs.system}.default";
    };

    storeUri = mkOption {
      type = types.str;
      default = "file://${stateDir}/cache";
      description = ''
        The binary cache to push to, in the syntax of `nix copy --to`:
        `s3://BUCKET?endpoint=HOST[:PORT]&scheme=http|https&region=R&profile=P`, or `file:///DIR`.
      '';
      example = "s3://nix-cache?endpoint=minio.lan:9000&scheme=http&region=us-east-1";
    };

    secretKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = ''
        Path to the Nix signing key (`name:base64`, as made by `nixpush keygen` or
        `nix key generate-secret`). Read by systemd through LoadCredential, so it may stay
        root-only (mode 0600); it is never copied into the Nix store. Set this or
        `secretKeyFiles`, or both (this key then signs first).
      '';
      example = "/var/lib/nixpush-keys/secret.key";
    };

    secretKeyFiles = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = ''
        Signing keys, each `.narinfo` signed by every one: during a key rotation, the old and the
        new key, so consumers trusting either accept the paths. Key names must differ. Read
        through LoadCredential like `secretKeyFile`.
      '';
      example = [ "/var/lib/nixpush-keys/secret.key" "/var/lib/nixpush-keys/secret-2.key" ];
    };

    credentialsFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = ''
        An AWS shared credentials file (`[profile]` sections with `aws_access_key_id` and
        `aws_secret_access_key`) for S3, passed through LoadCredential. Not copied into the store.
      '';
      example = "/root/.aws/credentials";
    };

    profile = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "The profile of `credentialsFile` to use; added to an s3:// `storeUri` as `profile=`.";
      example = "nixbuilder";
    };

    compression = mkOption {
      type = types.enum [ "zstd" "xz" "none" ];
      default = "zstd";
      description = "Compression of uploaded NARs. zstd is fast and understood by Nix 2.8 and later; xz (Nix's default, run through the xz tool on every core) is smaller and slower.";
      example = "xz";
    };

    jobs = mkOption {
      type = types.ints.positive;
      default = 4;
      description = "How many store paths are packed and uploaded at once.";
      example = 8;
    };

    maxUploadRate = mkOption {
      type = types.either types.ints.unsigned types.str;
      default = 0;
      description = ''
        Cap on the bytes a second sent to an S3 store, across all uploads: a number of
        bytes or a size such as "20MiB", "2.5MB" (0: no cap). Uploads take as long as the
        cap makes them; after an idle moment a tenth of a second of the cap (at least 1 MiB), after a slow answer of the store up to a second of it, goes out at once above it.
        Throttling answers of the store (503 SlowDown, 429) are handled whatever the cap.
      '';
      example = "20MiB";
    };

    uploadRateSchedule = mkOption {
      type = types.attrsOf (types.either types.ints.unsigned types.str);
      default = { };
      description = ''
        Time-of-day windows with a cap of their own, overriding maxUploadRate within them:
        "HH:MM-HH:MM" (local time of the machine; an end before the start crosses midnight,
        24:00 ends at midnight) to a rate as maxUploadRate takes it, or "unlimited". The cap
        changes as the day turns, while uploads run; `nixpush status` shows the cap now and
        its next change. Windows must not overlap (an assertion checks). Costs nothing
        beyond the cap's own: the schedule is read at each chunk sent.
      '';
      example = literalExpression ''{ "00:00-07:00" = "unlimited"; "12:00-13:00" = "50MiB"; }'';
    };

    caCertificate = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "PEM file of a private CA that signed the S3 endpoint's certificate (a self-signed MinIO, say).";
      example = "/etc/ssl/minio-ca.pem";
    };

    metricsListen = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "TCP address to serve Prometheus metrics on, at `/metrics` (queue items by state, uploads, request counts, rate).";
      example = "127.0.0.1:9747";
    };

    uploadLogs = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Upload the build log of every derivation the post-build-hook reports to `log/<drv name>`
        in the cache (plain text, after the outputs), where `nix log` finds it through the
        substituter once the local log is gone.
      '';
      example = false;
    };

    writeNarListing = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Write `<hash>.ls` beside each `.narinfo`: the JSON listing of the path's files with their
        offsets in the NAR, as Nix writes with `write-nar-listing=true`, for cache browsers,
        Hydra-style indexers and `nix-index`-like tools. Built while the NAR is packed.
      '';
      example = true;
    };

    trustCacheFor = mkOption {
      type = types.str;
      default = "1h";
      description = ''
        How long a path seen in the cache (or uploaded) is believed to stay there (a Go duration).
        After it, the next push that needs the path checks the cache again and uploads it again if
        it is gone (expiry, a wiped or restored bucket). Keep it well below the grace period of
        `nixpush gc` (24 h by default), which never deletes what was written within it: with
        `gc.enable` here, it must be below `gc.grace` and at most `gc.olderThan`. `"0s"`
        checks whole closures on every push. `nixpush push` always checks everything again.
      '';
      example = "0s";
    };

    maxSweepWait = mkOption {
      type = types.str;
      default = "1h";
      description = ''
        How long a push that meets a gc sweep of the cache waits for the sweep to finish (a Go
        duration); a push that would wait longer fails, and is retried. Keep it at or above the
        `gc.sweepWindow` of every gc of this cache (with `gc.enable` here, it must be).
      '';
      example = "2h";
    };

    exclude = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = ''
        Regular expressions (Go syntax) matched against store path names (the part after the
        hash): matching paths are not uploaded. `.narinfo`s that refer to them still list them,
        so consumers must get them from another substituter (an upstream cache).
      '';
      example = [ "-doc$" "^nixos-system-" ];
    };

    skipSignedBy = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = ''
        Key names: a path the local Nix database holds a signature of by one of them is not
        uploaded, as it is served by that key's cache (consumers must use that cache too).
      '';
      example = [ "cache.nixos.org-1" ];
    };

    socketGroup = mkOption {
      type = types.str;
      default = "nixpush";
      description = "Group allowed to use the daemon's socket; its members may queue paths with `nixpush push`.";
      example = "wheel";
    };

    pushSystemOnActivation = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Push the system's closure after every `nixos-rebuild switch` or `boot` (when the system
        profile changes) and at start-up.
      '';
      example = false;
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Extra arguments for `nixpush daemon`.";
      example = [ "--log-level" "debug" ];
    };

    gc = {
      enable = mkEnableOption ''
        closure-aware retention: `nixpush gc` on a timer deletes every path that no pin and no root
        pushed within `olderThan` needs (see docs/retention.md). Runs with credentials of
        its own, which may delete; the builders' must not. Needs no running daemon'';

      storeUri = mkOption {
        type = types.str;
        default = cfg.storeUri;
        defaultText = literalExpression "config.services.nixpush.storeUri";
        description = "The cache to collect, in the syntax of `storeUri`.";
        example = "s3://nix-cache?endpoint=minio.lan:9000&scheme=http&region=us-east-1";
      };

      olderThan = mkOption {
        type = types.str;
        default = "30d";
        description = "Keep the closures of roots pushed within this long (`30d`, `36h`, `1d12h`).";
        example = "90d";
      };

      grace = mkOption {
        type = types.str;
        default = "24h";
        description = ''
          Never delete what was written within this long, nor what it refers to: pushes in
          progress. It must exceed the longest push, from its first NAR to its root's `.narinfo`,
          and the daemons' `trustCacheFor`.
        '';
        example = "48h";
      };

      sweepWindow = mkOption {
        type = types.str;
        default = "10m";
        description = ''
          How long after listing the bucket gc may delete (a Go duration); a longer sweep lists
          again, five listings in all. Pushes that meet a sweep wait for it to finish: keep it at
          or below the daemons' `maxSweepWait`.
        '';
        example = "20m";
      };

      schedule = mkOption {
        type = types.str;
        default = "weekly";
        description = "When to run, as a systemd calendar event (`OnCalendar=`); missed runs happen at boot.";
        example = "Sun 03:00";
      };

      credentialsFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = ''
          An AWS shared credentials file for the gc account (the policy `nixpush init --print-policy`
          prints for gc: list, read, delete, abort multipart uploads), passed through LoadCredential.
        '';
        example = "/var/lib/nixpush-keys/gc-credentials";
      };

      profile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "The profile of `gc.credentialsFile` to use; added to an s3:// `gc.storeUri` as `profile=`.";
        example = "nixgc";
      };

      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Extra arguments for `nixpush gc`.";
        example = [ "--json" ];
      };
    };

    pins = mkOption {
      type = types.attrsOf (types.either types.path types.str);
      default = { };
      description = ''
        Named closures gc keeps whatever their age (`nixpush pin NAME PATH`), set by the gc service
        before each run; a path not yet in the cache stops that run, so nothing it needs goes.
        Removing one here does not unpin it: run `nixpush unpin NAME`.
      '';
      example = literalExpression ''{ current-system = config.system.build.toplevel; }'';
    };

    consumer = {
      enable = mkEnableOption "reading a nixpush cache as a substituter (for machines that only consume it)";
      url = mkOption {
        type = types.str;
        description = "The cache's URL as a substituter: the bucket's HTTP(S) URL when it allows anonymous download.";
        example = "http://minio.lan:9000/nix-cache";
      };
      publicKey = mkOption {
        type = types.str;
        description = "The cache's public key (`name:base64`, the public.key `nixpush keygen` wrote).";
        example = "nix-cache.lan-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
      };
    };
  };

  config = mkMerge [
    (mkIf cfg.consumer.enable {
      nix.settings.substituters = [ cfg.consumer.url ];
      nix.settings.trusted-public-keys = [ cfg.consumer.publicKey ];
    })

    (mkIf cfg.enable {
      assertions = [{
        assertion = hasPrefix "s3://" cfg.storeUri || hasPrefix "file:///" cfg.storeUri;
        message = "services.nixpush.storeUri must be s3://BUCKET?... or file:///DIR, not ${cfg.storeUri}";
      } {
        assertion = secretKeyFiles != [ ];
        message = "services.nixpush needs a signing key: set secretKeyFile (or secretKeyFiles); make one with nixpush keygen --name NAME --out DIR";
      }
        (readable "trustCacheFor" cfg.trustCacheFor trust goWant)
        (readable "maxSweepWait" cfg.maxSweepWait maxSweepWait goWant)
      ] ++ rateAssertions ++ notInExtraArgs "extraArgs" cfg.extraArgs {
        trust-cache-for = "trustCacheFor";
        max-sweep-wait = "maxSweepWait";
        max-upload-rate = "maxUploadRate";
      };

      environment.systemPackages = [ cfg.package ];
      environment.variables.NIXPUSH_SOCKET = socket;

      nix.settings.post-build-hook = hook;

      users.users.nixpush = {
        isSystemUser = true;
        group = "nixpush";
        extraGroups = optional (cfg.socketGroup != "nixpush") cfg.socketGroup;
        description = "nixpush daemon";
      };
      users.groups.nixpush = { };
      users.groups.${cfg.socketGroup} = { };

      # The hook (root) spools here when the daemon is down; setgid so the
      # daemon's group can read and remove what root wrote.
      systemd.tmpfiles.rules = [
        "d ${stateDir} 0750 nixpush nixpush -"
        "d ${spoolDir} 2770 nixpush nixpush -"
      ];

      systemd.sockets.nixpush = {
        description = "nixpush hand-off socket";
        wantedBy = [ "sockets.target" ];
        listenStreams = [ socket ];
        socketConfig = {
          SocketUser = "root";
          SocketGroup = cfg.socketGroup;
          SocketMode = "0660";
          DirectoryMode = "0755";
          RemoveOnStop = true;
        };
      };

      systemd.services.nixpush = {
        description = "nixpush: push built store paths to a Nix binary cache";
        documentation = [ "https://github.com/nixpush/nixpush" ];
        requires = [ "nixpush.socket" ];
        after = [ "nixpush.socket" "network-online.target" "nix-daemon.socket" ];
        wants = [ "network-online.target" ];
        wantedBy = [ "multi-user.target" ];
        # xz: the daemon compresses xz NARs with the xz tool (liblzma, every core).
        path = [ config.nix.package pkgs.xz ];
        environment = {
          NIXPUSH_SOCKET = socket;
        } // optionalAttrs (cfg.credentialsFile != null) {
          AWS_SHARED_CREDENTIALS_FILE = "%d/aws-credentials";
        };
        serviceConfig = {
          Type = "notify";
          NotifyAccess = "main";
          ExecStart = "${cfg.package}/bin/nixpush ${escapeShellArgs daemonArgs}";
          Restart = "on-failure";
          RestartSec = "2s";
          TimeoutStopSec = "30s";
          WatchdogSec = "2min";
          User = "nixpush";
          Group = "nixpush";
          StateDirectory = "nixpush";
          StateDirectoryMode = "0750";
          LoadCredential = map (k: "${k.name}:${k.file}") keyCredentials
            ++ optional (cfg.credentialsFile != null) "aws-credentials:${cfg.credentialsFile}"
            ++ optional (cfg.caCertificate != null) "ca.pem:${cfg.caCertificate}";

          # Builds first: uploads take the CPU and the disk that builds leave.
          # Measured (bench/: BenchmarkBuildBesideUploads, 101 builds while a
          # 1 GiB path uploads): normal priority 3.64 s, Nice=10 2.95 s,
          # Nice=10 with SCHED_BATCH 3.19 s (a woken hand-off no longer
          # preempts the upload threads, and every build's hook waits for
          # it), Nice=19 with SCHED_IDLE 3.09 s (and a daemon that could
          # starve behind busy builds until hooks spool). So: SCHED_OTHER.
          Nice = 10;
          CPUSchedulingPolicy = "other";
          IOSchedulingClass = "idle";

          # Hardening (see hardening above). No PrivateUsers: peer
          # credentials of the root hook would then read as the overflow
          # uid and be refused.
        } // hardening;
      };
    })

    (mkIf cfg.gc.enable {
      assertions = [{
        assertion = hasPrefix "s3://" cfg.gc.storeUri || hasPrefix "file:///" cfg.gc.storeUri;
        message = "services.nixpush.gc.storeUri must be s3://BUCKET?... or file:///DIR, not ${cfg.gc.storeUri}";
      } {
        assertion = gcFileDir == null || cfg.enable;
        message = "services.nixpush.gc on a file:// cache runs as the daemon's user: enable services.nixpush too";
      }
        (readable "gc.olderThan" cfg.gc.olderThan olderThan ageWant)
        (readable "gc.grace" cfg.gc.grace grace ageWant)
        (readable "gc.sweepWindow" cfg.gc.sweepWindow sweepWindow goWant)
      {
        assertion = grace == null || grace > 0;
        message = "services.nixpush.gc.grace must be above 0s: gc spares what was written within it, which is how a push in progress survives a sweep. Set it above the longest push, e.g. the default 24h";
      }] ++ notInExtraArgs "gc.extraArgs" cfg.gc.extraArgs {
        older-than = "gc.olderThan";
        grace = "gc.grace";
        sweep-window = "gc.sweepWindow";
      };

      environment.systemPackages = [ cfg.package ];

      systemd.services.nixpush-gc = {
        description = "nixpush gc: delete what no pin and no recent root of the cache needs";
        documentation = [ "https://github.com/nixpush/nixpush/blob/main/docs/retention.md" ];
        after = [ "network-online.target" ];
        wants = [ "network-online.target" ];
        environment = optionalAttrs (cfg.gc.credentialsFile != null) {
          AWS_SHARED_CREDENTIALS_FILE = "%d/aws-credentials";
        };
        serviceConfig = {
          Type = "oneshot";
          # Pins first: one that fails stops the run.
          ExecStartPre = pinCommands;
          ExecStart = "${cfg.package}/bin/nixpush ${escapeShellArgs gcArgs}";
          DynamicUser = gcFileDir == null;
          ReadWritePaths = optional (gcFileDir != null) gcFileDir;
          # The .narinfos read, by ETag: the next run reads only what changed.
          CacheDirectory = gcCacheDir;
          CacheDirectoryMode = "0700";
          LoadCredential = optional (cfg.gc.credentialsFile != null) "aws-credentials:${cfg.gc.credentialsFile}"
            ++ optional (cfg.caCertificate != null) "ca.pem:${cfg.caCertificate}";
        } // hardening // optionalAttrs (gcFileDir != null) {
          User = "nixpush";
          Group = "nixpush";
        };
      };

      systemd.timers.nixpush-gc = {
        description = "Run nixpush gc ${cfg.gc.schedule}";
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = cfg.gc.schedule;
          Persistent = true;
          RandomizedDelaySec = "30min";
        };
      };
    })

    # The daemon and gc on one machine: the settings nixpush itself refuses
    # to combine (the daemon checks them in gc's marker; docs/gc-protocol.md).
    # A duration that cannot be read fails its own assertion above.
    (mkIf (cfg.enable && cfg.gc.enable) {
      assertions = [{
        assertion = trust == null || grace == null || grace == 0 || trust < grace;
        message = "services.nixpush.trustCacheFor (${cfg.trustCacheFor}) must be below services.nixpush.gc.grace (${cfg.gc.grace}): gc spares only what was written within its grace, and the daemon believes what it saw for trustCacheFor. Otherwise the daemon, which reads gc's settings from its marker, trusts nothing and checks every path on every push. Lower trustCacheFor or raise gc.grace";
      } {
        assertion = trust == null || olderThan == null || trust <= olderThan;
        message = "services.nixpush.trustCacheFor (${cfg.trustCacheFor}) must not exceed services.nixpush.gc.olderThan (${cfg.gc.olderThan}): the daemon would believe in paths for longer than gc keeps the roots that need them. Otherwise the daemon, which reads gc's settings from its marker, trusts nothing and checks every path on every push. Lower trustCacheFor or raise gc.olderThan";
      } {
        assertion = sweepWindow == null || maxSweepWait == null || sweepWindow <= maxSweepWait;
        message = "services.nixpush.gc.sweepWindow (${cfg.gc.sweepWindow}) must not exceed services.nixpush.maxSweepWait (${cfg.maxSweepWait}): a push that meets a sweep waits at most maxSweepWait for it, so pushes meeting a longer one fail and are retried. Raise maxSweepWait or lower gc.sweepWindow";
      }];
    })

    (mkIf (cfg.enable && cfg.pushSystemOnActivation) {
      # switch: right away, from the activation script (never fatal).
      system.activationScripts.nixpush = ''
        OUT_PATHS="$systemConfig" ${cfg.package}/bin/nixpush-hook --socket ${socket} --spool-dir ${spoolDir} \
          || echo "nixpush: could not queue $systemConfig for upload" >&2
      '';
      # boot (no activation): when the system profile changes, and at start-up.
      systemd.paths.nixpush-system = {
        description = "Push the system closure when the system profile changes";
        wantedBy = [ "paths.target" ];
        pathConfig.PathChanged = "/nix/var/nix/profiles/system";
      };
      systemd.services.nixpush-system = {
        description = "Queue the system closure for nixpush";
        after = [ "nixpush.socket" ];
        requires = [ "nixpush.socket" ];
        wantedBy = [ "multi-user.target" ];
        path = [ config.nix.package ];
        serviceConfig = {
          Type = "oneshot";
          ExecStart = pushSystem;
          NoNewPrivileges = true;
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          RestrictAddressFamilies = [ "AF_UNIX" ];
        };
      };
    })
  ];
}
