// Package nix owns what nixpush knows about the local Nix: store paths and
// their validation, path info read from the Nix database (through one
// long-lived `nix-store --serve`, the protocol of ssh:// stores, or Nix's
// own tools one process per closure; never one per path), the outputs of a
// .drv, the realisations of content-addressed derivations, build logs in
// Nix's log directory, narinfo text, fingerprints and signing keys.
//
// Invariant: a fingerprint always lists the full reference paths sorted, so a
// signature made here verifies with every Nix from 2.8 to current and Lix;
// a realisation is signed over the fingerprint Nix 2.8 checks.
package nix
