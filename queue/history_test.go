package queue

import (
	"encoding/binary"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

func openOpts(t *testing.T, path string, opts Options) *Queue {
	t.Helper()
	q, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func pushed(t *testing.T, q *Queue, ps ...string) {
	t.Helper()
	if _, err := q.Enqueue(ctx, ps); err != nil {
		t.Fatal(err)
	}
	leasePaths(t, q, len(ps))
	if err := q.Complete(ctx, ps...); err != nil {
		t.Fatal(err)
	}
}

// TestHistoryPerStore: what was pushed under one history merges nothing
// under another, and each keeps its own done set across reopens.
func TestHistoryPerStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	a := openOpts(t, path, Options{History: "s3://a"})
	pushed(t, a, "p", "q")
	wantStats(t, a, 0, 0, 0, 2)
	a.Close()

	b := openOpts(t, path, Options{History: "file:///b"})
	wantStats(t, b, 0, 0, 0, 0)
	if res, err := b.Enqueue(ctx, paths("p", "q")); err != nil || res.Added != 2 {
		t.Fatalf("enqueue under another store = %+v, %v; want both added", res, err)
	}
	b.Close()

	a = openOpts(t, path, Options{History: "s3://a"})
	defer a.Close()
	wantStats(t, a, 2, 0, 0, 2) // b's queued items are the queue's; a's history is kept
}

// TestDoneFor: a done record merges enqueues while it is younger than
// DoneFor, never with DoneFor < 0, and for ever with 0.
func TestDoneFor(t *testing.T) {
	for _, tc := range []struct {
		name      string
		doneFor   time.Duration
		after     time.Duration
		wantAdded int
	}{
		{"young record merges", time.Hour, 59 * time.Minute, 0},
		{"old record does not", time.Hour, 61 * time.Minute, 1},
		{"never", -1, 0, 1},
		{"forever", 0, 1000 * time.Hour, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &clock{t: time.Unix(1e9, 0)}
			q := openOpts(t, filepath.Join(t.TempDir(), "q.db"), Options{Now: c.Now, DoneFor: tc.doneFor})
			defer q.Close()
			pushed(t, q, "p")
			c.Add(tc.after)
			res, err := q.Enqueue(ctx, paths("p"))
			if err != nil || res.Added != tc.wantAdded {
				t.Fatalf("enqueue = %+v, %v; want %d added", res, err, tc.wantAdded)
			}
			st := q.Stats()
			if st.Queued+st.Done != 1 {
				t.Fatalf("path counted %d times: %+v", st.Queued+st.Done, st)
			}
		})
	}
}

// TestEnqueueRecheck: an explicit push is never merged away by the done
// set, marks a queued item, and requeues an active one once it completes.
func TestEnqueueRecheck(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), nil)
	pushed(t, q, "done")
	q.Enqueue(ctx, paths("queued", "active", "failed"))
	leased, _ := q.Lease(ctx, 3)
	_ = leased
	q.Release(ctx, "queued")
	q.Fail(ctx, "failed", errors.New("x"))
	res, err := q.EnqueueRecheck(ctx, paths("done", "queued", "active", "failed", "new"))
	if err != nil || res.Added != 3 || res.Merged != 2 {
		t.Fatalf("recheck = %+v, %v; want 3 added (done, failed, new), 2 merged", res, err)
	}
	wantStats(t, q, 4, 1, 0, 0)
	items, _ := q.Lease(ctx, 10)
	for _, it := range items {
		if !it.Recheck {
			t.Errorf("%s leased without Recheck", it.Path)
		}
	}
	if err := q.Complete(ctx, "active"); err != nil {
		t.Fatal(err)
	}
	// The push that was under way when the recheck came did not count.
	wantStats(t, q, 1, 4, 0, 0)
	items, _ = q.Lease(ctx, 10)
	if len(items) != 1 || items[0].Path != "active" || !items[0].Recheck {
		t.Fatalf("leased %+v; want active, to recheck", items)
	}
}

// TestMigrateV1DropsDoneSet: a version 1 file's done set (which named no
// store) is dropped; its queued items are kept.
func TestMigrateV1DropsDoneSet(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bbolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		meta.Put(keySchema, []byte("1"))
		done, _ := tx.CreateBucket(bucketDone)
		done.Put([]byte("/nix/store/old"), binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano())))
		items, _ := tx.CreateBucket(bucketItems)
		order, _ := tx.CreateBucket(bucketOrder)
		putItem(items, Item{Path: "/nix/store/queued", State: Queued, Seq: 1})
		return order.Put(seqKey(1), []byte("/nix/store/queued"))
	})
	db.Close()
	q := openOpts(t, path, Options{History: "s3://x"})
	defer q.Close()
	wantStats(t, q, 1, 0, 0, 0)
	if res, err := q.Enqueue(ctx, paths("/nix/store/old")); err != nil || res.Added != 1 {
		t.Fatalf("enqueue of a v1 done path = %+v, %v; want it queued", res, err)
	}
	q.db.View(func(tx *bbolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keySchema); string(v) != "2" {
			t.Errorf("schema after open = %q; want 2", v)
		}
		return nil
	})
}

// TestUnfinishedPushesAreRechecked: an item whose push did not complete
// (its worker died, it was released, it failed and is retried) is checked
// whole on its next push: that push may have written .narinfos without
// checking again what they rely on.
func TestUnfinishedPushesAreRechecked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q := openOpts(t, path, Options{Backoff: Backoff{Base: time.Nanosecond, Max: time.Nanosecond}})
	q.Enqueue(ctx, paths("died", "released", "retried", "failed", "done"))
	leasePaths(t, q, 5)
	q.Release(ctx, "released")
	q.Retry(ctx, "retried", errors.New("x"))
	q.Fail(ctx, "failed", errors.New("x"))
	q.Complete(ctx, "done")
	q.Close() // "died" stays leased
	q = openOpts(t, path, Options{})
	defer q.Close()
	if _, err := q.Requeue(ctx, true); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond) // the retry's backoff
	items, err := q.Lease(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, it := range items {
		got[it.Path] = it.Recheck
	}
	for _, p := range []string{"died", "released", "retried", "failed"} {
		if recheck, ok := got[p]; !ok || !recheck {
			t.Errorf("%s: leased %v, recheck %v; want leased to recheck", p, ok, recheck)
		}
	}
	if len(got) != 4 {
		t.Errorf("leased %v; want the four unfinished items", got)
	}
}
