// Package daemon wires the queue to the uploader behind the local API: it
// serves /v1/enqueue, /v1/status and /v1/wait on a Unix socket, imports the
// hook's spool, and runs the workers that lease queued paths and push them.
//
// Invariant: an enqueue is answered only after the queue has committed it,
// and a queued path leaves the queue only once its whole closure is in the
// cache or it has failed for a reason that retrying cannot fix.
package daemon
