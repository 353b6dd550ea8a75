# nixpush built from this checkout. rev: the commit, for nixpush --version
# (the flake passes self.rev).
{ lib, buildGoModule, rev ? null }:

buildGoModule rec {
  pname = "nixpush";
  version = "0.1.0";
  src = lib.cleanSource ./.;
  # After changing go.mod/go.sum run ./scripts/vendor-hash.sh --write;
  # ./scripts/test.sh fails while it is stale.
  vendorHash = "sha256-tDqSwR7+jtThYLoImBGAtfXXtIVqQNRfOXpQcJbbMJs=";
  subPackages = [ "cmd/nixpush" "cmd/nixpush-hook" ];
  env.CGO_ENABLED = 0;
  ldflags = [ "-s" "-w" "-X github.com/nixpush/nixpush/internal/version.version=${version}" ]
    ++ lib.optional (rev != null) "-X github.com/nixpush/nixpush/internal/version.commit=${rev}";
  # The tests need a Nix store, nix-daemon and MinIO: ./scripts/test.sh runs them.
  doCheck = false;
  meta = {
    description = "Push what Nix builds to a signed binary cache in S3, from a post-build-hook that never blocks";
    license = lib.licenses.mit;
    mainProgram = "nixpush";
    platforms = lib.platforms.linux;
  };
}
