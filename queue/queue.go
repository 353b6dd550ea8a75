package queue

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// State is where an item is in its life.
type State string

const (
	Queued State = "queued" // waiting for a worker
	Active State = "active" // leased by a worker
	Failed State = "failed" // failed for a reason retrying cannot fix
	Done   State = "done"   // pushed
)

// Item is one queued path.
type Item struct {
	Path       string    `json:"path"`
	State      State     `json:"state"`
	Seq        uint64    `json:"seq"` // enqueue order
	Attempts   int       `json:"attempts"`
	EnqueuedAt time.Time `json:"enqueued_at"`
	NotBefore  time.Time `json:"not_before,omitzero"` // retry backoff: not leased before
	LastError  string    `json:"last_error,omitempty"`
	// Class is the kind of failure, as the cause's FailureClass method
	// named it (the queue does not interpret it; Heal finds it again).
	Class     string    `json:"class,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
	// Recheck asks the worker to check the whole closure again rather than
	// trust what it remembers: an explicit push, or an item whose last
	// push did not complete (it failed, was released, or its worker died).
	Recheck bool `json:"recheck,omitempty"`
	// Again: the item was enqueued for a recheck while it was active; it is
	// queued again once that push completes.
	Again bool `json:"again,omitempty"`
}

// Stats are the queue's counts.
type Stats struct {
	Queued, Active, Failed, Done int
	OldestQueued                 time.Time // zero when nothing is queued
	Failures                     []Item    // failed items, oldest first, at most maxFailures
}

const maxFailures = 100

// Backoff is the retry schedule: Base·2^(attempts-1), capped at Max, ±20 %.
type Backoff struct {
	Base, Max time.Duration
}

// Delay is the backoff before the attempt after the given number of failed
// attempts.
func (b Backoff) Delay(attempts int) time.Duration {
	d := b.Base
	for i := 1; i < attempts && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	jitter := 0.8 + 0.4*rand.Float64()
	return time.Duration(float64(d) * jitter)
}

// Options configure a Queue.
type Options struct {
	Now     func() time.Time // nil: time.Now
	Backoff Backoff          // zero: 1s doubling to 5m
	// History names whose done set this queue reads and writes (the daemon
	// passes an opaque ID of the cache it pushes to): what was pushed to
	// one cache says nothing about another.
	History string
	// DoneFor is how long a done record merges a new enqueue of its path:
	// 0 forever, below 0 never (the path is queued again).
	DoneFor time.Duration
}

// SchemaVersion is the layout of the bbolt file this build writes.
// Version 1 kept one done set for whatever cache the daemon pushed to;
// version 2 keeps one per history, and opening a version 1 file drops its
// done set, which named no cache (its paths are checked again when next
// enqueued: nothing is lost, a push costs a check).
const SchemaVersion = 2

var (
	bucketMeta  = []byte("meta")
	bucketItems = []byte("items") // path -> Item (queued, active, failed)
	bucketOrder = []byte("order") // seq -> path, for queued items
	bucketDone  = []byte("done")  // history -> (path -> unix nanoseconds)
	keySchema   = []byte("schema")
	keyProbe    = []byte("probe")
)

// Queue is a durable queue. It is safe for concurrent use by one process;
// bbolt's file lock keeps other processes out.
type Queue struct {
	db   *bbolt.DB
	path string
	opts Options

	mu      sync.Mutex
	changed chan struct{}
	stats   Stats                // counts only
	failed  map[string]Item      // the failed set
	backoff map[string]time.Time // queued items waiting for NotBefore

	commitMu   sync.Mutex // guards the group commit below
	committing bool
	waiting    []groupCall
	commits    int // group commits made, for tests
}

// groupCall is an update waiting for the next group commit.
type groupCall struct {
	fn   func(*bbolt.Tx) error
	done chan error
}

// group runs fn in a read-write transaction and returns once it is
// committed. Calls that arrive while a commit is under way share the next
// one, so a burst of hooks costs a few fsyncs; a lone call commits at once
// (bbolt's Batch would first wait MaxBatchDelay for company). As with
// Batch, fn may run more than once: when a shared transaction fails, each
// call is retried in a transaction of its own.
func (q *Queue) group(fn func(*bbolt.Tx) error) error {
	c := groupCall{fn: fn, done: make(chan error, 1)}
	q.commitMu.Lock()
	q.waiting = append(q.waiting, c)
	if q.committing {
		q.commitMu.Unlock()
		return <-c.done
	}
	q.committing = true
	for len(q.waiting) > 0 {
		calls := q.waiting
		q.waiting = nil
		q.commits++
		q.commitMu.Unlock()
		err := q.db.Update(func(tx *bbolt.Tx) error {
			for _, c := range calls {
				if err := c.fn(tx); err != nil {
					return err
				}
			}
			return nil
		})
		for _, c := range calls {
			if err != nil && len(calls) > 1 {
				c.done <- q.db.Update(c.fn)
			} else {
				c.done <- err
			}
		}
		q.commitMu.Lock()
	}
	q.committing = false
	q.commitMu.Unlock()
	return <-c.done
}

// Open opens or creates the queue file at path. Items a previous process
// left leased return to the queue.
func Open(path string, opts Options) (*Queue, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Backoff.Base <= 0 {
		opts.Backoff.Base = time.Second
	}
	if opts.Backoff.Max <= 0 {
		opts.Backoff.Max = 5 * time.Minute
	}
	// The freelist is rebuilt at open (a scan of a small file) rather than
	// written at every commit: a hand-off's commit writes its own pages and
	// the meta page only, however large the done set has grown.
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType})
	if err != nil {
		switch {
		case errors.Is(err, bolterrors.ErrTimeout):
			return nil, fmt.Errorf("queue: open %s: another nixpush daemon holds the lock (timeout)", path)
		case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrChecksum), errors.Is(err, bolterrors.ErrVersionMismatch):
			return nil, fmt.Errorf("queue: %s is corrupt or not a nixpush queue (%v); move it away to start an empty queue (what it held is then not pushed)", path, err)
		}
		return nil, fmt.Errorf("queue: open %s: %w", path, err)
	}
	q := &Queue{db: db, path: path, opts: opts, changed: make(chan struct{}),
		failed: map[string]Item{}, backoff: map[string]time.Time{}}
	if err := q.init(); err != nil {
		db.Close()
		return nil, err
	}
	return q, nil
}

// init checks the schema, returns leased items to the queue and counts.
func (q *Queue) init() (err error) {
	defer func() {
		if r := recover(); r != nil { // bbolt panics on some corrupt pages
			err = fmt.Errorf("queue: %s is corrupt (%v); move it away to start an empty queue (what it held is then not pushed)", q.path, r)
		}
	}()
	return q.db.Update(func(tx *bbolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		schema := SchemaVersion
		if v := meta.Get(keySchema); v != nil {
			n, err := strconv.Atoi(string(v))
			if err != nil {
				return fmt.Errorf("queue: %s: unreadable schema version %q; the file is corrupt, move it away", q.path, v)
			}
			if n > SchemaVersion {
				return fmt.Errorf("queue: %s: written by a newer nixpush (schema %d, this build knows %d); upgrade nixpush or move the file away", q.path, n, SchemaVersion)
			}
			schema = n
		}
		if schema < 2 && tx.Bucket(bucketDone) != nil {
			// Version 1's done set named no cache: drop it (see SchemaVersion).
			if err := tx.DeleteBucket(bucketDone); err != nil {
				return err
			}
		}
		if err := meta.Put(keySchema, []byte(strconv.Itoa(SchemaVersion))); err != nil {
			return err
		}
		items, err := tx.CreateBucketIfNotExists(bucketItems)
		if err != nil {
			return err
		}
		order, err := tx.CreateBucketIfNotExists(bucketOrder)
		if err != nil {
			return err
		}
		histories, err := tx.CreateBucketIfNotExists(bucketDone)
		if err != nil {
			return err
		}
		done, err := histories.CreateBucketIfNotExists(q.historyKey())
		if err != nil {
			return err
		}
		q.stats.Done = done.Stats().KeyN
		var requeue []Item
		err = items.ForEach(func(k, v []byte) error {
			var it Item
			if err := json.Unmarshal(v, &it); err != nil {
				return fmt.Errorf("queue: %s: item %q: %v; the file is corrupt, move it away", q.path, k, err)
			}
			switch it.State {
			case Queued:
				q.stats.Queued++
				if !it.NotBefore.IsZero() {
					q.backoff[it.Path] = it.NotBefore
				}
			case Active:
				requeue = append(requeue, it)
			case Failed:
				q.stats.Failed++
				q.failed[it.Path] = it
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, it := range requeue {
			it.State, it.Recheck = Queued, true
			it.UpdatedAt = q.opts.Now()
			if err := putItem(items, it); err != nil {
				return err
			}
			if err := order.Put(seqKey(it.Seq), []byte(it.Path)); err != nil {
				return err
			}
			q.stats.Queued++
		}
		return nil
	})
}

// Close closes the file.
func (q *Queue) Close() error { return q.db.Close() }

// Changed returns a channel closed at the next committed change.
func (q *Queue) Changed() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.changed
}

// delta is what a transaction changed in the counts and in-memory sets.
type delta struct {
	queued, active, failed, done int
	failedSet                    map[string]*Item // nil Item: removed from the failed set
	backoff                      map[string]time.Time
}

func (d *delta) setFailed(path string, it *Item) {
	if d.failedSet == nil {
		d.failedSet = map[string]*Item{}
	}
	d.failedSet[path] = it
}

func (d *delta) setBackoff(path string, t time.Time) {
	if d.backoff == nil {
		d.backoff = map[string]time.Time{}
	}
	d.backoff[path] = t
}

// apply records a committed transaction's delta and wakes waiters.
func (q *Queue) apply(d delta) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.stats.Queued += d.queued
	q.stats.Active += d.active
	q.stats.Failed += d.failed
	q.stats.Done += d.done
	for p, it := range d.failedSet {
		if it == nil {
			delete(q.failed, p)
		} else {
			q.failed[p] = *it
		}
	}
	for p, t := range d.backoff {
		if t.IsZero() {
			delete(q.backoff, p)
		} else {
			q.backoff[p] = t
		}
	}
	close(q.changed)
	q.changed = make(chan struct{})
}

// EnqueueResult says what an enqueue did.
type EnqueueResult struct {
	Added  int // newly queued (or failed items queued again)
	Merged int // already queued, active or done
}

// Enqueue durably records paths and returns after the commit. Concurrent
// callers share commits (see group), so a burst of hooks costs few fsyncs.
func (q *Queue) Enqueue(ctx context.Context, paths []string) (EnqueueResult, error) {
	if q.allMerge(paths) {
		return EnqueueResult{Merged: len(paths)}, nil
	}
	return q.enqueue(paths, q.enqueueTx)
}

// allMerge reports whether every path is already queued, active or done
// (recently enough) in the committed queue, where a hook's hand-off of it
// would change nothing: the hand-off is then as durable as it gets without
// a commit, which spares a built path handed over again (a rebuild, a
// second output reported twice) two fsyncs.
func (q *Queue) allMerge(paths []string) bool {
	merge := true
	q.db.View(func(tx *bbolt.Tx) error {
		now := q.opts.Now()
		for _, p := range paths {
			if !q.merges(tx, p, now) {
				merge = false
				return nil
			}
		}
		return nil
	})
	return merge
}

// merges reports whether enqueueTx would merge p rather than queue it.
func (q *Queue) merges(tx *bbolt.Tx, p string, now time.Time) bool {
	if q.isDone(tx, p, now) {
		return true
	}
	it, ok, err := getItem(tx, p)
	return err == nil && ok && it.State != Failed
}

// EnqueueRecheck is Enqueue for paths whose closures are to be checked
// again whatever was pushed before (an explicit push): a done path is
// queued again, a queued one is marked to be rechecked, and an active one
// is queued again once its push completes.
func (q *Queue) EnqueueRecheck(ctx context.Context, paths []string) (EnqueueResult, error) {
	return q.enqueue(paths, q.recheckTx)
}

// enqueue runs one tx per path in a group commit, counting what each
// added or merged.
func (q *Queue) enqueue(paths []string, tx1 func(tx *bbolt.Tx, p string, now time.Time, d *delta) (bool, error)) (EnqueueResult, error) {
	var res EnqueueResult
	var d delta
	err := q.group(func(tx *bbolt.Tx) error {
		res, d = EnqueueResult{}, delta{} // group may run this more than once
		now := q.opts.Now()
		for _, p := range paths {
			added, err := tx1(tx, p, now, &d)
			if err != nil {
				return err
			}
			if added {
				res.Added++
			} else {
				res.Merged++
			}
		}
		return nil
	})
	if err != nil {
		return EnqueueResult{}, fmt.Errorf("queue: enqueue: %w", err)
	}
	q.apply(d)
	return res, nil
}

func (q *Queue) recheckTx(tx *bbolt.Tx, p string, now time.Time, d *delta) (bool, error) {
	it, ok, err := getItem(tx, p)
	if err != nil {
		return false, err
	}
	if ok && it.State != Failed {
		if it.State == Active {
			it.Again = true
		} else {
			it.Recheck = true
		}
		return false, putItem(tx.Bucket(bucketItems), it)
	}
	done := q.doneBucket(tx)
	if done.Get([]byte(p)) != nil {
		if err := done.Delete([]byte(p)); err != nil {
			return false, err
		}
		d.done--
	}
	if !ok {
		it = Item{Path: p, EnqueuedAt: now}
	} else { // failed
		d.failed--
		d.setFailed(p, nil)
		it.Attempts, it.LastError, it.NotBefore = 0, "", time.Time{}
	}
	it.Recheck = true
	return true, q.queueTx(tx, it, now, d)
}

// doneBucket is the done set of this queue's history.
func (q *Queue) doneBucket(tx *bbolt.Tx) *bbolt.Bucket {
	return tx.Bucket(bucketDone).Bucket(q.historyKey())
}

// historyKey names this history's bucket (bbolt refuses an empty name).
func (q *Queue) historyKey() []byte { return []byte("history:" + q.opts.History) }

// isDone reports whether a done record of p still merges enqueues.
func (q *Queue) isDone(tx *bbolt.Tx, p string, now time.Time) bool {
	v := q.doneBucket(tx).Get([]byte(p))
	if v == nil || q.opts.DoneFor < 0 {
		return false
	}
	if q.opts.DoneFor == 0 || len(v) != 8 {
		return true
	}
	at := time.Unix(0, int64(binary.BigEndian.Uint64(v)))
	return now.Sub(at) < q.opts.DoneFor
}

// enqueueTx queues p unless it is queued, active or done (recently enough).
func (q *Queue) enqueueTx(tx *bbolt.Tx, p string, now time.Time, d *delta) (bool, error) {
	items := tx.Bucket(bucketItems)
	done := q.doneBucket(tx)
	if q.isDone(tx, p, now) {
		return false, nil
	}
	it := Item{Path: p, EnqueuedAt: now}
	if v := items.Get([]byte(p)); v != nil {
		if err := json.Unmarshal(v, &it); err != nil {
			return false, err
		}
		if it.State != Failed {
			return false, nil
		}
		d.failed--
		d.setFailed(p, nil)
		it.Attempts, it.LastError, it.NotBefore, it.Class = 0, "", time.Time{}, ""
	}
	if done.Get([]byte(p)) != nil { // a done record too old to trust
		if err := done.Delete([]byte(p)); err != nil {
			return false, err
		}
		d.done--
	}
	return true, q.queueTx(tx, it, now, d)
}

// queueTx writes it as Queued at the end of the order.
func (q *Queue) queueTx(tx *bbolt.Tx, it Item, now time.Time, d *delta) error {
	order := tx.Bucket(bucketOrder)
	seq, err := order.NextSequence()
	if err != nil {
		return err
	}
	it.State, it.Seq, it.UpdatedAt = Queued, seq, now
	if err := putItem(tx.Bucket(bucketItems), it); err != nil {
		return err
	}
	d.queued++
	return order.Put(seqKey(seq), []byte(it.Path))
}

// errNothing rolls back a transaction that found nothing to change.
var errNothing = errors.New("nothing to change")

// Lease marks up to n eligible queued items active and returns them, oldest
// first.
func (q *Queue) Lease(ctx context.Context, n int) ([]Item, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []Item
	var d delta
	err := q.db.Update(func(tx *bbolt.Tx) error {
		out, d = nil, delta{}
		now := q.opts.Now()
		items, order := tx.Bucket(bucketItems), tx.Bucket(bucketOrder)
		var leasedKeys [][]byte
		c := order.Cursor()
		for k, v := c.First(); k != nil && len(out) < n; k, v = c.Next() {
			var it Item
			raw := items.Get(v)
			if raw == nil {
				leasedKeys = append(leasedKeys, slices.Clone(k)) // stale order entry
				continue
			}
			if err := json.Unmarshal(raw, &it); err != nil {
				return err
			}
			if it.NotBefore.After(now) {
				continue
			}
			if !it.NotBefore.IsZero() {
				d.setBackoff(it.Path, time.Time{})
			}
			it.State, it.UpdatedAt = Active, now
			out = append(out, it)
			leasedKeys = append(leasedKeys, slices.Clone(k))
		}
		for _, k := range leasedKeys {
			if err := order.Delete(k); err != nil {
				return err
			}
		}
		for _, it := range out {
			if err := putItem(items, it); err != nil {
				return err
			}
		}
		if len(out) == 0 && len(leasedKeys) == 0 {
			return errNothing // roll back: an empty commit would cost two fsyncs
		}
		d.queued -= len(out)
		d.active += len(out)
		return nil
	})
	if errors.Is(err, errNothing) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("queue: lease: %w", err)
	}
	if len(out) > 0 {
		q.apply(d)
	}
	return out, nil
}

// Complete marks active items done.
func (q *Queue) Complete(ctx context.Context, paths ...string) error {
	return q.update("complete", func(tx *bbolt.Tx, now time.Time, d *delta) error {
		for _, p := range paths {
			if err := q.completeTx(tx, p, now, d); err != nil {
				return err
			}
		}
		return nil
	})
}

func (q *Queue) completeTx(tx *bbolt.Tx, p string, now time.Time, d *delta) error {
	it, ok, err := getItem(tx, p)
	if err != nil || !ok {
		return err
	}
	if it.Again {
		// Enqueued for a recheck while this push ran: its turn comes again.
		q.leaveState(it, d)
		it.Again, it.Recheck, it.Attempts, it.LastError, it.NotBefore = false, true, 0, "", time.Time{}
		return q.queueTx(tx, it, now, d)
	}
	if err := tx.Bucket(bucketItems).Delete([]byte(p)); err != nil {
		return err
	}
	q.leaveState(it, d)
	done := q.doneBucket(tx)
	if done.Get([]byte(p)) == nil {
		d.done++
	}
	return done.Put([]byte(p), binary.BigEndian.AppendUint64(nil, uint64(now.UnixNano())))
}

// leaveState counts it out of its current state.
func (q *Queue) leaveState(it Item, d *delta) {
	switch it.State {
	case Queued:
		d.queued--
		if !it.NotBefore.IsZero() {
			d.setBackoff(it.Path, time.Time{})
		}
	case Active:
		d.active--
	case Failed:
		d.failed--
		d.setFailed(it.Path, nil)
	}
}

// Retry returns an active item to the queue after a transient failure, not
// to be leased again before its backoff has passed.
func (q *Queue) Retry(ctx context.Context, path string, cause error) error {
	return q.update("retry", func(tx *bbolt.Tx, now time.Time, d *delta) error {
		it, ok, err := getItem(tx, path)
		if err != nil || !ok || it.State != Active {
			return err
		}
		q.leaveState(it, d)
		it.Attempts++
		it.Recheck = true
		it.LastError = cause.Error()
		it.NotBefore = now.Add(q.opts.Backoff.Delay(it.Attempts))
		d.setBackoff(path, it.NotBefore)
		return q.queueTx(tx, it, now, d)
	})
}

// Release returns active items to the queue as they were, attempts
// unchanged: the daemon is stopping and did not finish them.
func (q *Queue) Release(ctx context.Context, paths ...string) error {
	return q.update("release", func(tx *bbolt.Tx, now time.Time, d *delta) error {
		for _, p := range paths {
			it, ok, err := getItem(tx, p)
			if err != nil {
				return err
			}
			if !ok || it.State != Active {
				continue
			}
			q.leaveState(it, d)
			it.State, it.UpdatedAt, it.Recheck = Queued, now, true
			if err := putItem(tx.Bucket(bucketItems), it); err != nil {
				return err
			}
			if err := tx.Bucket(bucketOrder).Put(seqKey(it.Seq), []byte(it.Path)); err != nil {
				return err
			}
			d.queued++
		}
		return nil
	})
}

// Fail moves an active item to the failed set with its reason.
func (q *Queue) Fail(ctx context.Context, path string, cause error) error {
	return q.update("fail", func(tx *bbolt.Tx, now time.Time, d *delta) error {
		it, ok, err := getItem(tx, path)
		if err != nil || !ok || it.State == Failed {
			return err
		}
		q.leaveState(it, d)
		if it.State == Queued {
			if err := tx.Bucket(bucketOrder).Delete(seqKey(it.Seq)); err != nil {
				return err
			}
		}
		it.Attempts++
		it.State, it.LastError, it.UpdatedAt, it.NotBefore, it.Recheck = Failed, cause.Error(), now, time.Time{}, true
		it.Class = failureClass(cause)
		d.failed++
		d.setFailed(path, &it)
		return putItem(tx.Bucket(bucketItems), it)
	})
}

// Requeue queues failed (and done) items again with a fresh attempt count;
// all requeues every failed item. It returns how many moved.
func (q *Queue) Requeue(ctx context.Context, all bool, paths ...string) (int, error) {
	moved := 0
	err := q.update("requeue", func(tx *bbolt.Tx, now time.Time, d *delta) error {
		moved = 0
		if all {
			q.mu.Lock()
			for p := range q.failed {
				paths = append(paths, p)
			}
			q.mu.Unlock()
		}
		for _, p := range paths {
			if q.doneBucket(tx).Get([]byte(p)) != nil {
				if err := q.doneBucket(tx).Delete([]byte(p)); err != nil {
					return err
				}
				d.done--
				if err := q.queueTx(tx, Item{Path: p, EnqueuedAt: now}, now, d); err != nil {
					return err
				}
				moved++
				continue
			}
			it, ok, err := getItem(tx, p)
			if err != nil {
				return err
			}
			if !ok || it.State != Failed {
				continue
			}
			if err := q.requeueFailedTx(tx, it, now, d); err != nil {
				return err
			}
			moved++
		}
		return nil
	})
	return moved, err
}

// requeueFailedTx queues a failed item again with a fresh attempt count.
func (q *Queue) requeueFailedTx(tx *bbolt.Tx, it Item, now time.Time, d *delta) error {
	q.leaveState(it, d)
	it.Attempts, it.LastError, it.NotBefore, it.Class = 0, "", time.Time{}, ""
	return q.queueTx(tx, it, now, d)
}

// Replace removes from and enqueues to in one transaction: a derivation item
// becomes its outputs without a moment where neither is queued. from is not
// counted as done; its outputs are, once pushed.
func (q *Queue) Replace(ctx context.Context, from string, to []string) error {
	return q.update("replace", func(tx *bbolt.Tx, now time.Time, d *delta) error {
		it, ok, err := getItem(tx, from)
		if err != nil {
			return err
		}
		if ok {
			if err := tx.Bucket(bucketItems).Delete([]byte(from)); err != nil {
				return err
			}
			if it.State == Queued {
				if err := tx.Bucket(bucketOrder).Delete(seqKey(it.Seq)); err != nil {
					return err
				}
			}
			q.leaveState(it, d)
		}
		for _, p := range to {
			if _, err := q.enqueueTx(tx, p, now, d); err != nil {
				return err
			}
		}
		return nil
	})
}

// update runs fn in a write transaction and applies its delta on commit.
func (q *Queue) update(op string, fn func(tx *bbolt.Tx, now time.Time, d *delta) error) error {
	var d delta
	err := q.db.Update(func(tx *bbolt.Tx) error {
		d = delta{}
		return fn(tx, q.opts.Now(), &d)
	})
	if err != nil {
		return fmt.Errorf("queue: %s: %w", op, err)
	}
	q.apply(d)
	return nil
}

// Probe commits a small write (the time, in the meta bucket): whether the
// queue can commit now, for a caller that saw commits fail.
func (q *Queue) Probe(ctx context.Context) error {
	return q.update("probe", func(tx *bbolt.Tx, now time.Time, d *delta) error {
		return tx.Bucket(bucketMeta).Put(keyProbe, binary.BigEndian.AppendUint64(nil, uint64(now.UnixNano())))
	})
}

// Pending is how many items are queued or leased: Stats' two counts,
// without the rest of Stats (a read of the oldest item, the failures).
func (q *Queue) Pending() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stats.Queued + q.stats.Active
}

// Stats returns the counts, the oldest queued item's age and the failures.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	st := q.stats
	for _, it := range q.failed {
		st.Failures = append(st.Failures, it)
	}
	q.mu.Unlock()
	slices.SortFunc(st.Failures, func(a, b Item) int { return a.UpdatedAt.Compare(b.UpdatedAt) })
	if len(st.Failures) > maxFailures {
		st.Failures = st.Failures[:maxFailures]
	}
	if st.Queued > 0 {
		q.db.View(func(tx *bbolt.Tx) error {
			if _, v := tx.Bucket(bucketOrder).Cursor().First(); v != nil {
				if it, ok, _ := getItem(tx, string(v)); ok {
					st.OldestQueued = it.EnqueuedAt
				}
			}
			return nil
		})
	}
	return st
}

// NextWake is the earliest time a queued item waiting for its backoff
// becomes eligible, or zero.
func (q *Queue) NextWake() time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	var t time.Time
	for _, nb := range q.backoff {
		if t.IsZero() || nb.Before(t) {
			t = nb
		}
	}
	return t
}

func getItem(tx *bbolt.Tx, p string) (Item, bool, error) {
	v := tx.Bucket(bucketItems).Get([]byte(p))
	if v == nil {
		return Item{}, false, nil
	}
	var it Item
	if err := json.Unmarshal(v, &it); err != nil {
		return Item{}, false, fmt.Errorf("item %q: %w", p, err)
	}
	return it, true, nil
}

func putItem(b *bbolt.Bucket, it Item) error {
	v, err := json.Marshal(it)
	if err != nil {
		return err
	}
	return b.Put([]byte(it.Path), v)
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }
