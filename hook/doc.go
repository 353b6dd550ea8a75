// Package hook is the hand-off nixpush-hook makes after every build: it
// sends the paths Nix built to the daemon's POST /v1/enqueue (package api)
// and waits for the answer that the queue has committed them; when the
// daemon cannot take them, nixpush-hook writes them to the spool (package
// spool) instead. The full client, for the nixpush command and tests, is
// api/client.
//
// It is linked into nixpush-hook, which runs inside Nix's build loop, so it
// must stay small: no S3, no bbolt, no logging library, and not even
// net/http.
//
// Invariant: nixpush-hook reports success only once the daemon has committed the
// paths to its queue, or once the request is fsynced in the spool.
package hook
