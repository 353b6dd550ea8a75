{
  description = "nixpush: push what Nix builds to a signed binary cache in S3";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      rev = self.rev or self.dirtyRev or null;
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      overlays.default = final: prev: { nixpush = final.callPackage ./package.nix { inherit rev; }; };

      packages = forAll (pkgs: {
        default = pkgs.callPackage ./package.nix { inherit rev; };
        nixpush = self.packages.${pkgs.system}.default;
      });

      nixosModules.default = { pkgs, ... }: {
        imports = [ ./nixos-module ];
        nixpkgs.overlays = [ self.overlays.default ];
      };
    };
}
