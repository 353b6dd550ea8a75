// Package daemon wires the queue to the uploader behind the local API: it
// serves /v1/enqueue, /v1/status, /v1/wait and /v1/retry on a Unix socket
// (who may enqueue is decided by the peer's credentials), imports the hook's
// spool (package spool), and runs the workers that lease queued items and
// push them: store paths, and a derivation's build log and realisations as
// items of their own ("…drv#log", "…drv#realisations"), pushed after its
// outputs.
//
// Invariant: an enqueue is answered only after the queue has committed it,
// and a queued path leaves the queue only once its whole closure is in the
// cache or it has failed for a reason that retrying cannot fix.
//
// It checks the store at start and whenever a push meets a store error
// (storecheck.go): while the check fails nothing is leased, and once it
// passes the items that failed for the store's configuration are queued
// again. It never exits for a failing store. Nor for a queue that cannot
// commit (a full state disk, health.go): it answers the hook with an error
// so that the hook spools, holds in memory what it turned away, queues it
// itself once a commit succeeds, and keeps settling leased items until
// their outcome is committed. Both conditions show in status, on the
// systemd STATUS= line (notify.go) and in the metrics (metrics.go).
//
// Run (daemon.go) opens the queue and the socket (socket.go) and starts the
// goroutines: the API server (server.go), the workers (work.go), the spool
// import (spool.go), the store check and the status reports.
package daemon
