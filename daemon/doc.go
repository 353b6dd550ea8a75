// Package daemon wires the queue to the uploader behind the local API: it
// serves /v1/enqueue, /v1/status and /v1/wait on a Unix socket, imports the
// hook's spool, and runs the workers that lease queued paths and push them.
//
// Invariant: an enqueue is answered only after the queue has committed it,
// and a queued path leaves the queue only once its whole closure is in the
// cache or it has failed for a reason that retrying cannot fix.
//
// It checks the store at start and whenever a push meets a store error
// (storecheck.go): while the check fails nothing is leased, and once it
// passes the items that failed for the store's configuration are queued
// again. It never exits for a failing store.
package daemon
