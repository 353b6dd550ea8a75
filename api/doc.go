// Package api is the nixpush daemon's local API: HTTP and JSON over a Unix
// socket, with versioned routes (/v1/enqueue, /v1/status, /v1/wait,
// /v1/retry) that `curl --unix-socket` can drive. It holds what both ends
// share: the requests and answers, the meaning of the status codes (errors.go),
// the enqueue request's hand-written JSON (json.go) and the one-line status
// summary (statusline.go). The daemon serves it; its clients are
// nixpush-hook (package hook's hand-off) and, for the nixpush command and
// tests, api/client.
//
// It is linked into nixpush-hook, which runs inside Nix's build loop, so it
// must stay small: no S3, no bbolt, no logging library, no net/http, and
// neither encoding/json nor fmt.
package api
