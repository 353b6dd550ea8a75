// Package testenv starts the real components nixpush's tests run against:
// a MinIO server on loopback, and the machine's Nix with its client caches
// isolated per test. A missing binary fails the test with the fix; it is
// never skipped.
package testenv
