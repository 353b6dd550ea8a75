package queue

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

type classed struct{ class string }

func (c classed) Error() string        { return "failed for " + c.class }
func (c classed) FailureClass() string { return c.class }

// TestHeal: failed items of the healed class are queued again, across a
// reopen; others stay failed; items in backoff may go at once.
func TestHeal(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	path := filepath.Join(t.TempDir(), "q.db")
	q := open(t, path, c)
	if _, err := q.Enqueue(ctx, paths("store1", "store2", "path", "transient")); err != nil {
		t.Fatal(err)
	}
	leasePaths(t, q, 4)
	for _, f := range []struct {
		path string
		err  error
	}{{"store1", classed{"store"}}, {"store2", fmtWrap(classed{"store"})}, {"path", errors.New("NAR hash mismatch")}} {
		if err := q.Fail(ctx, f.path, f.err); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Retry(ctx, "transient", errors.New("connection refused")); err != nil {
		t.Fatal(err)
	}
	wantStats(t, q, 1, 0, 3, 0)
	if got := leasePaths(t, q, 10); len(got) != 0 {
		t.Fatalf("leased %v during backoff", got)
	}
	q.Close()
	q = open(t, path, c) // the class is durable

	n, err := q.Heal(ctx, "store")
	if err != nil || n != 2 {
		t.Fatalf("Heal = %d, %v; want 2 items queued again", n, err)
	}
	wantStats(t, q, 3, 0, 1, 0)
	if st := q.Stats(); st.Failures[0].Path != "path" {
		t.Fatalf("still failed: %+v; want the path failure only", st.Failures)
	}
	got := leasePaths(t, q, 10)
	slices.Sort(got)
	if !slices.Equal(got, []string{"store1", "store2", "transient"}) {
		t.Fatalf("leased %v after Heal; want the store failures and the item that was in backoff", got)
	}
	if n, err := q.Heal(ctx, "store"); err != nil || n != 0 {
		t.Fatalf("second Heal = %d, %v; want nothing", n, err)
	}
}

type wrapped struct{ err error }

func (w wrapped) Error() string { return "upload x: " + w.err.Error() }
func (w wrapped) Unwrap() error { return w.err }

func fmtWrap(err error) error { return wrapped{err} }
