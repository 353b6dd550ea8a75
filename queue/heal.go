package queue

import (
	"context"
	"errors"
	"time"

	"go.etcd.io/bbolt"
)

// failureClass is the class a cause names with a FailureClass method
// anywhere in its chain, or "".
func failureClass(cause error) string {
	var c interface{ FailureClass() string }
	if errors.As(cause, &c) {
		return c.FailureClass()
	}
	return ""
}

// Heal is for a cause that has gone away: it queues again the failed items
// of class (with a fresh attempt count) and lets queued items waiting out
// a retry backoff go at once. It returns how many failed items it queued.
func (q *Queue) Heal(ctx context.Context, class string) (int, error) {
	var failed, waiting []string
	q.mu.Lock()
	for p, it := range q.failed {
		if class != "" && it.Class == class {
			failed = append(failed, p)
		}
	}
	for p := range q.backoff {
		waiting = append(waiting, p)
	}
	q.mu.Unlock()
	if len(failed) == 0 && len(waiting) == 0 {
		return 0, nil
	}
	moved := 0
	err := q.update("heal", func(tx *bbolt.Tx, now time.Time, d *delta) error {
		moved = 0
		for _, p := range failed {
			it, ok, err := getItem(tx, p)
			if err != nil {
				return err
			}
			if !ok || it.State != Failed || it.Class != class {
				continue
			}
			if err := q.requeueFailedTx(tx, it, now, d); err != nil {
				return err
			}
			moved++
		}
		for _, p := range waiting {
			it, ok, err := getItem(tx, p)
			if err != nil {
				return err
			}
			if !ok || it.State != Queued || it.NotBefore.IsZero() {
				continue
			}
			it.NotBefore = time.Time{}
			d.setBackoff(p, time.Time{})
			if err := putItem(tx.Bucket(bucketItems), it); err != nil {
				return err
			}
		}
		return nil
	})
	return moved, err
}
