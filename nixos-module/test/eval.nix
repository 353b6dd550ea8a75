# Evaluates the module with nixpkgs' lib.evalModules against stubs of the
# NixOS options it sets, and returns what it generates. Used by
# scripts/check-module.sh:
#   nix-instantiate --eval --strict --json nixos-module/test/eval.nix --arg lib 'import /path/to/nixpkgs.lib/lib'
{ lib, config ? { } }:
let
  anything = lib.mkOption { type = lib.types.anything; default = { }; };
  stubs = { lib, ... }: {
    options = {
      nix.settings = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      nix.package = lib.mkOption { type = lib.types.package; default = fakePkg "nix"; };
      systemd.services = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      systemd.sockets = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      systemd.paths = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      systemd.timers = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      systemd.tmpfiles.rules = lib.mkOption { type = lib.types.listOf lib.types.str; default = [ ]; };
      users.users = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      users.groups = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      system.activationScripts = lib.mkOption { type = lib.types.attrsOf lib.types.str; default = { }; };
      environment.systemPackages = lib.mkOption { type = lib.types.listOf lib.types.package; default = [ ]; };
      environment.variables = lib.mkOption { type = lib.types.attrsOf lib.types.str; default = { }; };
      assertions = lib.mkOption { type = lib.types.listOf lib.types.anything; default = [ ]; };
      warnings = lib.mkOption { type = lib.types.listOf lib.types.str; default = [ ]; };
    };
  };
  fakePkg = name: { type = "derivation"; name = name; outPath = "/nix/store/00000000000000000000000000000000-${name}"; };
  pkgs = {
    writeShellScript = name: text: "/nix/store/11111111111111111111111111111111-${name}";
    nixpush = fakePkg "nixpush";
    xz = fakePkg "xz";
  };
  example = {
    services.nixpush = {
      enable = true;
      storeUri = "s3://nix-cache?endpoint=minio.lan:9000&scheme=https&region=us-east-1";
      profile = "nixbuilder";
      secretKeyFile = "/var/lib/nixpush-keys/secret.key";
      credentialsFile = "/root/.aws/credentials";
      caCertificate = "/etc/ssl/minio-ca.pem";
      metricsListen = "127.0.0.1:9747";
      jobs = 8;
      maxUploadRate = "20MiB";
      uploadRateSchedule."00:00-07:00" = "unlimited";
      gc = {
        enable = true;
        olderThan = "90d";
        credentialsFile = "/var/lib/nixpush-keys/gc-credentials";
        profile = "nixgc";
      };
      pins.release = "/nix/store/22222222222222222222222222222222-release";
    };
    services.nixpush.consumer = {
      enable = true;
      url = "https://minio.lan:9000/nix-cache";
      publicKey = "nix-cache.lan-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
    };
  };
  eval = lib.evalModules {
    modules = [ stubs ../default.nix example config ];
    specialArgs = { inherit pkgs; };
  };
  c = eval.config;
  failed = builtins.filter (a: !a.assertion) c.assertions;

  # The duration assertions, on top of the example: each case's settings
  # and the start of every message that must fail ([ ]: all hold).
  # example sets enable, gc.enable and gc.olderThan; cases override them
  # with mkForce.
  force = lib.mkForce;
  assertionCases = {
    defaults = { settings = { }; fail = [ ]; };
    fitting = {
      settings.services.nixpush = { trustCacheFor = "36h"; maxSweepWait = "20m"; gc = { grace = "2d"; olderThan = force "1d12h"; sweepWindow = "20m"; }; };
      fail = [ ];
    };
    justBelowGrace = { settings.services.nixpush.trustCacheFor = "23h59m59.999999999s"; fail = [ ]; };
    trustAtGrace = {
      settings.services.nixpush.trustCacheFor = "24h";
      fail = [ "services.nixpush.trustCacheFor (24h) must be below services.nixpush.gc.grace (24h)" ];
    };
    trustAboveOlderThan = {
      settings.services.nixpush = { trustCacheFor = "37h"; gc = { grace = "2d"; olderThan = force "36h"; }; };
      fail = [ "services.nixpush.trustCacheFor (37h) must not exceed services.nixpush.gc.olderThan (36h)" ];
    };
    windowAboveWait = {
      settings.services.nixpush = { maxSweepWait = "9m59s"; };
      fail = [ "services.nixpush.gc.sweepWindow (10m) must not exceed services.nixpush.maxSweepWait (9m59s)" ];
    };
    graceZero = {
      settings.services.nixpush = { trustCacheFor = "0s"; gc.grace = "0s"; };
      fail = [ "services.nixpush.gc.grace must be above 0s" ];
    };
    unreadable = {
      settings.services.nixpush = { trustCacheFor = "1d"; maxSweepWait = "1 hour"; gc = { olderThan = force "thirty days"; grace = "-1h"; sweepWindow = "1d"; }; };
      fail = [
        "services.nixpush.trustCacheFor = \"1d\" is not a duration nixpush reads"
        "services.nixpush.maxSweepWait = \"1 hour\" is not a duration nixpush reads"
        "services.nixpush.gc.olderThan = \"thirty days\" is not a duration nixpush reads"
        "services.nixpush.gc.grace = \"-1h\" is not a duration nixpush reads"
        "services.nixpush.gc.sweepWindow = \"1d\" is not a duration nixpush reads"
      ];
    };
    flagsInExtraArgs = {
      settings.services.nixpush = { extraArgs = [ "--trust-cache-for=2h" ]; gc.extraArgs = [ "--sweep-window" "20m" ]; };
      fail = [
        "services.nixpush.extraArgs passes --trust-cache-for"
        "services.nixpush.gc.extraArgs passes --sweep-window"
      ];
    };
    # gc without the daemon here: the daemon's settings are another
    # machine's, so only gc's own assertions apply.
    gcAlone = {
      settings.services.nixpush = { enable = force false; trustCacheFor = "99h"; maxSweepWait = "1s"; gc.grace = "0s"; };
      fail = [ "services.nixpush.gc.grace must be above 0s" ];
    };
    rateSchedule = {
      settings.services.nixpush = { maxUploadRate = force "20MiB"; uploadRateSchedule = force { "00:00-07:00" = "unlimited"; "22:00-24:00" = 0; "12:00-13:00" = "50MiB/s"; "7:30-8:00" = 1048576; }; };
      fail = [ ];
    };
    rateScheduleBad = {
      settings.services.nixpush = { maxUploadRate = force "20MiB, 00:00-07:00=0"; uploadRateSchedule = force { "00:00-7:00" = "fast"; "25:00-06:00" = 0; "06:00-06:00" = 0; "05:00-09:00" = "1MiB"; "23:00-01:00" = "2MiB"; }; };
      fail = [
        "services.nixpush.maxUploadRate = \"20MiB, 00:00-07:00=0\" is not a rate nixpush reads"
        "services.nixpush.uploadRateSchedule: \"06:00-06:00\", \"25:00-06:00\" is not a window nixpush reads"
        "services.nixpush.uploadRateSchedule: 00:00-7:00 = \"fast\" is not a rate nixpush reads"
        "services.nixpush.uploadRateSchedule: windows 00:00-7:00 and 05:00-09:00, 00:00-7:00 and 23:00-01:00 overlap"
      ];
    };
    rateInExtraArgs = {
      settings.services.nixpush.extraArgs = [ "--max-upload-rate=1MiB" ];
      fail = [ "services.nixpush.extraArgs passes --max-upload-rate" ];
    };
    daemonAlone = {
      settings.services.nixpush = { trustCacheFor = "99h"; maxSweepWait = "1s"; gc.enable = force false; };
      fail = [ ];
    };
  };
  assertionProblems = lib.concatLists (lib.mapAttrsToList (name: case:
    let
      e = lib.evalModules {
        modules = [ stubs ../default.nix example case.settings ];
        specialArgs = { inherit pkgs; };
      };
      got = map (a: a.message) (builtins.filter (a: !a.assertion) e.config.assertions);
      unexpected = builtins.filter (m: !(lib.any (f: lib.hasPrefix f m) case.fail)) got;
      missing = builtins.filter (f: !(lib.any (m: lib.hasPrefix f m) got)) case.fail;
    in
    map (m: "${name}: unexpected: ${m}") unexpected ++ map (f: "${name}: did not fail: ${f}") missing)
    assertionCases);
in
assert failed == [ ] || throw (builtins.concatStringsSep "; " (map (a: a.message) failed));
assert assertionProblems == [ ] || throw (builtins.concatStringsSep "; " assertionProblems);
{
  nixSettings = c.nix.settings;
  service = c.systemd.services.nixpush;
  socket = c.systemd.sockets.nixpush;
  systemService = c.systemd.services.nixpush-system;
  path = c.systemd.paths.nixpush-system;
  tmpfiles = c.systemd.tmpfiles.rules;
  users = c.users.users;
  activation = c.system.activationScripts.nixpush;
  gcService = c.systemd.services.nixpush-gc;
  gcTimer = c.systemd.timers.nixpush-gc;
  assertionCases = builtins.length (builtins.attrNames assertionCases);
  # Every option has a type, a description and an example (enable options
  # carry theirs in the description).
  undocumented = lib.filter (o: o.description or null == null || (!(o ? example) && !(lib.hasSuffix "enable" (lib.showOption o.loc))))
    (lib.collect (o: o._type or null == "option") eval.options.services.nixpush);
}
