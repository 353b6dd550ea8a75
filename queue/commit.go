package queue

import "go.etcd.io/bbolt"

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
