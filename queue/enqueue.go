package queue

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

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
