package queue

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"go.etcd.io/bbolt"
)

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
