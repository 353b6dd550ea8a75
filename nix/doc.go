// Package nix owns what nixpush knows about the local Nix: store paths and
// their validation, path info read from the Nix database (through Nix's own
// tools, one process per closure, never one per path), narinfo text,
// fingerprints and signing keys.
//
// Invariant: a fingerprint always lists the full reference paths sorted, so a
// signature made here verifies with every Nix from 2.8 to current and Lix.
package nix
