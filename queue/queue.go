package queue

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/bbolt"
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

// doneBucket is the done set of this queue's history.
func (q *Queue) doneBucket(tx *bbolt.Tx) *bbolt.Bucket {
	return tx.Bucket(bucketDone).Bucket(q.historyKey())
}

// historyKey names this history's bucket (bbolt refuses an empty name).
func (q *Queue) historyKey() []byte { return []byte("history:" + q.opts.History) }

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
