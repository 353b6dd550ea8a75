// Package e2e holds nixpush's end-to-end tests: real Nix builds through
// nixpush-hook, the real daemon pushes to a real MinIO or a file:// cache,
// and real Nix substitutes the result into a fresh store. It has no code
// outside its tests.
package e2e
