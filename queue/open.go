package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

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
		if err := q.migrate(tx); err != nil {
			return err
		}
		if err := q.createBuckets(tx); err != nil {
			return err
		}
		leased, err := q.load(tx)
		if err != nil {
			return err
		}
		return q.requeueLeased(tx, leased)
	})
}

// migrate checks the file's schema version and brings it to this build's.
func (q *Queue) migrate(tx *bbolt.Tx) error {
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
	return meta.Put(keySchema, []byte(strconv.Itoa(SchemaVersion)))
}

// createBuckets creates the buckets a new file lacks, this history's done
// set among them, and counts that set.
func (q *Queue) createBuckets(tx *bbolt.Tx) error {
	if _, err := tx.CreateBucketIfNotExists(bucketItems); err != nil {
		return err
	}
	if _, err := tx.CreateBucketIfNotExists(bucketOrder); err != nil {
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
	return nil
}

// load counts the queued and failed items, fills the failed set and the
// backoff map, and returns the items a previous process left leased.
func (q *Queue) load(tx *bbolt.Tx) ([]Item, error) {
	var leased []Item
	err := tx.Bucket(bucketItems).ForEach(func(k, v []byte) error {
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
			leased = append(leased, it)
		case Failed:
			q.stats.Failed++
			q.failed[it.Path] = it
		}
		return nil
	})
	return leased, err
}

// requeueLeased returns items a previous process left leased to the queue,
// in their old place, to be checked again.
func (q *Queue) requeueLeased(tx *bbolt.Tx, leased []Item) error {
	items, order := tx.Bucket(bucketItems), tx.Bucket(bucketOrder)
	for _, it := range leased {
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
}
