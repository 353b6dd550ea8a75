// Package testenv starts the real components nixpush's tests run against:
// a MinIO server on loopback (and a throttling proxy in front of it, to
// hold an upload mid-way), the machine's Nix with its client caches
// isolated per test, the nixpush daemon as a process, a private CA for TLS,
// a small tmpfs to fill, a pseudo-terminal; and the Nix expressions the
// tests build and the tree comparison that judges what Nix fetched.
//
// Invariant: a missing binary fails the test with the fix; it is never
// skipped. Every server, daemon, mount and terminal it starts is closed at
// cleanup.
package testenv
