// Package e2e holds nixpush's end-to-end tests: real Nix builds through
// nixpush-hook, the real daemon pushes to a real MinIO or a file:// cache,
// and real Nix substitutes the result into a fresh store. It has no code
// outside its tests.
//
// Invariant: what a test asserts of a cache it asserts through real
// components (Nix fetching the whole closure with the key trusted, objects
// read back from MinIO), not through nixpush's own account of it; faults are injected beside real
// servers (a throttling proxy, a full tmpfs, a killed process), not in
// place of them.
package e2e
