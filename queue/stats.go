package queue

import (
	"slices"
	"time"

	"go.etcd.io/bbolt"
)

// Stats are the queue's counts.
type Stats struct {
	Queued, Active, Failed, Done int
	OldestQueued                 time.Time // zero when nothing is queued
	Failures                     []Item    // failed items, oldest first, at most maxFailures
}

const maxFailures = 100

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
