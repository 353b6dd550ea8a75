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
in
assert failed == [ ] || throw (builtins.concatStringsSep "; " (map (a: a.message) failed));
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
  # Every option has a type, a description and an example (enable options
  # carry theirs in the description).
  undocumented = lib.filter (o: o.description or null == null || (!(o ? example) && !(lib.hasSuffix "enable" (lib.showOption o.loc))))
    (lib.collect (o: o._type or null == "option") eval.options.services.nixpush);
}
