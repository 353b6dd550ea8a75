// Package client is the full client of the nixpush daemon's API, for the
// nixpush command and tests. nixpush-hook uses hook.Handoff instead.
//
// It links net/http, which the hook must not: that is why it is a package
// of its own. Each call is one request to one of the daemon's routes, the
// same `curl --unix-socket` can make; errors the daemon answers come back
// as api.APIError.
package client
