// Command nixpush-hook is Nix's post-build-hook for nixpush: it hands the
// paths Nix just built to the nixpush daemon and returns at once. When the
// daemon cannot take them within a bounded time it writes them to the
// spool, which the daemon imports later, and still exits 0: a build never
// waits for the network or fails for it. It exits non-zero only when the
// paths could be neither handed over nor spooled (see docs/operations.md,
// "When the hook cannot hand over"), so that nothing Nix built goes
// unrecorded.
//
// It links neither S3, bbolt, net/http nor a logging library, so that it
// starts in milliseconds inside Nix's build loop.
//
//	nix.settings.post-build-hook = "/path/to/nixpush-hook";
package main
