// Package hook is the client side of the nixpush daemon's local API: HTTP
// and JSON over a Unix socket, with versioned routes (/v1/enqueue,
// /v1/status, /v1/wait) that `curl --unix-socket` can drive. It also writes
// the spool, where the hook leaves requests the daemon could not take.
//
// It is linked into nixpush-hook, which runs inside Nix's build loop, so it
// must stay small: no S3, no bbolt, no logging library.
//
// Invariant: the hook reports success only once the daemon has committed the
// paths to its queue, or once the request is fsynced in the spool.
package hook
