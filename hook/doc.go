// Package hook is the client side of the nixpush daemon's local API: HTTP
// and JSON over a Unix socket, with versioned routes (/v1/enqueue,
// /v1/status, /v1/wait, /v1/retry) that `curl --unix-socket` can drive. It holds the
// types both ends share (requests, status, errors, the status line), the
// hand-off nixpush-hook makes after every build, and the spool writer, where
// the hook leaves requests the daemon could not take. The full client, for
// the nixpush command and tests, is hook/client.
//
// It is linked into nixpush-hook, which runs inside Nix's build loop, so it
// must stay small: no S3, no bbolt, no logging library, and for the
// hand-off not even net/http.
//
// Invariant: the hook reports success only once the daemon has committed the
// paths to its queue, or once the request is fsynced in the spool.
package hook
