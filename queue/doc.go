// Package queue is nixpush's durable work queue, kept in a bbolt file. It
// knows nothing of S3, NARs or sockets: an item is a string (a store path,
// or a derivation whose outputs are wanted). It owns the items' states
// (queued, active, failed, done), leases, the retry backoff schedule, the
// failed set with each failure's reason and class (Heal queues a class
// again once its cause is gone), what was done when, per cache history
// (the daemon trusts it for Options.DoneFor), and the stats; enqueues that
// arrive together share one commit (group commit). It also keeps the
// progress of resumable uploads (uploads.go): an opaque record and the
// parts sent, one small key per part, so that a large upload cut off by a
// restart or a crash sends only the rest.
//
// The files follow the concerns: open.go opens the file and keeps its
// schema, commit.go the group commit, enqueue.go what queues items,
// lease.go leases and how they end (complete, retry, release, fail),
// heal.go the failed set's classes, stats.go the counts, uploads.go the
// uploads' progress; queue.go holds the types and transaction helpers.
//
// Invariants: an enqueue returns only after its transaction has committed,
// so an acknowledged item survives any crash; an item leased by a worker
// returns to the queue when the queue is next opened, so a daemon that dies
// mid-upload loses nothing; an item is queued at most once, however often it
// is enqueued.
package queue
