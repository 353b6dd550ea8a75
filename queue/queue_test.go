package queue

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func open(t *testing.T, path string, c *clock) *Queue {
	t.Helper()
	opts := Options{}
	if c != nil {
		opts.Now = c.Now
	}
	q, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

var ctx = context.Background()

func paths(ps ...string) []string { return ps }

func leasePaths(t *testing.T, q *Queue, n int) []string {
	t.Helper()
	items, err := q.Lease(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, it := range items {
		if it.State != Active {
			t.Fatalf("leased item %s in state %s", it.Path, it.State)
		}
		out = append(out, it.Path)
	}
	return out
}

func wantStats(t *testing.T, q *Queue, queued, active, failed, done int) {
	t.Helper()
	st := q.Stats()
	if st.Queued != queued || st.Active != active || st.Failed != failed || st.Done != done {
		t.Fatalf("stats = %d queued, %d active, %d failed, %d done; want %d %d %d %d",
			st.Queued, st.Active, st.Failed, st.Done, queued, active, failed, done)
	}
}

func TestLifecycle(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), nil)
	res, err := q.Enqueue(ctx, paths("a", "b", "c"))
	if err != nil || res.Added != 3 {
		t.Fatalf("enqueue = %+v, %v", res, err)
	}
	wantStats(t, q, 3, 0, 0, 0)
	if got := leasePaths(t, q, 2); strings.Join(got, ",") != "a,b" {
		t.Fatalf("leased %v; want oldest first a,b", got)
	}
	wantStats(t, q, 1, 2, 0, 0)
	if err := q.Complete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := q.Fail(ctx, "b", errors.New("hash mismatch")); err != nil {
		t.Fatal(err)
	}
	wantStats(t, q, 1, 0, 1, 1)
	st := q.Stats()
	if len(st.Failures) != 1 || st.Failures[0].Path != "b" || st.Failures[0].LastError != "hash mismatch" {
		t.Fatalf("failures = %+v", st.Failures)
	}
	if n, err := q.Requeue(ctx, true); err != nil || n != 1 {
		t.Fatalf("requeue all = %d, %v", n, err)
	}
	wantStats(t, q, 2, 0, 0, 1)
	if got := leasePaths(t, q, 10); strings.Join(got, ",") != "c,b" {
		t.Fatalf("leased %v; want c,b", got)
	}
}

func TestMergeRules(t *testing.T) {
	for _, tc := range []struct {
		name      string
		setup     func(q *Queue)
		wantAdded int
	}{
		{name: "new", setup: func(q *Queue) {}, wantAdded: 1},
		{name: "queued", setup: func(q *Queue) { q.Enqueue(ctx, paths("p")) }, wantAdded: 0},
		{name: "active", setup: func(q *Queue) { q.Enqueue(ctx, paths("p")); q.Lease(ctx, 1) }, wantAdded: 0},
		{name: "done", setup: func(q *Queue) { q.Enqueue(ctx, paths("p")); q.Lease(ctx, 1); q.Complete(ctx, "p") }, wantAdded: 0},
		{name: "failed is a new chance", setup: func(q *Queue) {
			q.Enqueue(ctx, paths("p"))
			q.Lease(ctx, 1)
			q.Fail(ctx, "p", errors.New("x"))
		}, wantAdded: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := open(t, filepath.Join(t.TempDir(), "q.db"), nil)
			tc.setup(q)
			before := q.Stats()
			res, err := q.Enqueue(ctx, paths("p"))
			if err != nil {
				t.Fatal(err)
			}
			if res.Added != tc.wantAdded || res.Added+res.Merged != 1 {
				t.Fatalf("enqueue = %+v; want %d added", res, tc.wantAdded)
			}
			after := q.Stats()
			if total := after.Queued + after.Active + after.Failed + after.Done; total != 1 {
				t.Fatalf("path counted %d times after merge (before %+v, after %+v)", total, before, after)
			}
		})
	}
}

func TestSurvivesReopenAndReturnsLeases(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	q.Enqueue(ctx, paths("a", "b", "c", "d"))
	leasePaths(t, q, 2) // a, b leased: the daemon dies mid-upload
	q.Complete(ctx, "a")
	q.Close()

	q = open(t, path, nil)
	wantStats(t, q, 3, 0, 0, 1)
	if got := leasePaths(t, q, 10); strings.Join(got, ",") != "b,c,d" {
		t.Fatalf("after reopen leased %v; want b,c,d (the lost lease first)", got)
	}
}

func TestRetryBackoff(t *testing.T) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	q, err := Open(filepath.Join(t.TempDir(), "q.db"), Options{Now: c.Now, Backoff: Backoff{Base: time.Second, Max: 8 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	q.Enqueue(ctx, paths("p", "other"))
	for attempt := 1; attempt <= 6; attempt++ {
		got := leasePaths(t, q, 1)
		if len(got) != 1 || got[0] != "p" {
			t.Fatalf("attempt %d: leased %v; want p", attempt, got)
		}
		if err := q.Retry(ctx, "p", fmt.Errorf("timeout %d", attempt)); err != nil {
			t.Fatal(err)
		}
		if attempt == 1 { // another item is not held up by p's backoff
			if got := leasePaths(t, q, 1); len(got) != 1 || got[0] != "other" {
				t.Fatalf("leased %v while p backs off; want other", got)
			}
			q.Complete(ctx, "other")
		}
		wake := q.NextWake()
		base := min(time.Second<<(attempt-1), 8*time.Second)
		d := wake.Sub(c.Now())
		if d < base*8/10 || d > base*12/10 {
			t.Fatalf("attempt %d: backoff %v; want %v ±20%%", attempt, d, base)
		}
		if got := leasePaths(t, q, 1); len(got) != 0 {
			t.Fatalf("attempt %d: leased %v before its backoff passed", attempt, got)
		}
		c.Add(d)
	}
	it := leasePaths(t, q, 1)
	if len(it) != 1 || !q.NextWake().IsZero() {
		t.Fatalf("after backoff: leased %v, next wake %v", it, q.NextWake())
	}
	st := q.Stats()
	if st.Active != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestReplace(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), nil)
	q.Enqueue(ctx, paths("x.drv^*", "out2"))
	leasePaths(t, q, 1)
	if err := q.Replace(ctx, "x.drv^*", paths("out1", "out2")); err != nil {
		t.Fatal(err)
	}
	wantStats(t, q, 2, 0, 0, 0) // out2 merged, the drv not counted as done
	if got := leasePaths(t, q, 10); strings.Join(got, ",") != "out2,out1" {
		t.Fatalf("leased %v", got)
	}
}

func TestOpenErrorsNameTheFile(t *testing.T) {
	dir := t.TempDir()
	corrupt := filepath.Join(dir, "corrupt.db")
	os.WriteFile(corrupt, []byte(strings.Repeat("not a bbolt file ", 1000)), 0o600)
	_, err := Open(corrupt, Options{})
	if err == nil || !strings.Contains(err.Error(), corrupt) || !strings.Contains(err.Error(), "move it away") {
		t.Fatalf("corrupt file: %v", err)
	}
	if b, _ := os.ReadFile(corrupt); !strings.HasPrefix(string(b), "not a bbolt file") {
		t.Fatal("corrupt file was changed")
	}

	newer := filepath.Join(dir, "newer.db")
	db, err := bbolt.Open(newer, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bbolt.Tx) error {
		b, _ := tx.CreateBucket(bucketMeta)
		return b.Put(keySchema, []byte("99"))
	})
	db.Close()
	_, err = Open(newer, Options{})
	if err == nil || !strings.Contains(err.Error(), newer) || !strings.Contains(err.Error(), "schema 99") {
		t.Fatalf("newer schema: %v", err)
	}

	locked := filepath.Join(dir, "locked.db")
	q := open(t, locked, nil)
	_ = q
	_, err = Open(locked, Options{})
	if err == nil || !strings.Contains(err.Error(), "another nixpush daemon") {
		t.Fatalf("locked: %v", err)
	}
}

func TestConcurrentEnqueueLosesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	added := 0
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				// Every path is sent by two goroutines.
				res, err := q.Enqueue(ctx, paths(fmt.Sprintf("p%d-%d", g/2, i)))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				added += res.Added
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if added != 16*20 {
		t.Fatalf("added %d; want %d (each path once)", added, 16*20)
	}
	q.Close()
	q = open(t, path, nil)
	wantStats(t, q, 320, 0, 0, 0)
	if got := leasePaths(t, q, 1000); len(got) != 320 {
		t.Fatalf("leased %d after reopen; want 320", len(got))
	}
}

func TestChangedFires(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), nil)
	ch := q.Changed()
	select {
	case <-ch:
		t.Fatal("fired before any change")
	default:
	}
	q.Enqueue(ctx, paths("a"))
	select {
	case <-ch:
	case <-time.After(time.Second):
		t.Fatal("did not fire on enqueue")
	}
}

func BenchmarkEnqueueParallel(b *testing.B) {
	q, err := Open(filepath.Join(b.TempDir(), "q.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	var n sync.Mutex
	i := 0
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n.Lock()
			i++
			p := fmt.Sprintf("/nix/store/p%d", i)
			n.Unlock()
			if _, err := q.Enqueue(ctx, paths(p)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestRelease(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), nil)
	q.Enqueue(ctx, paths("a", "b"))
	leasePaths(t, q, 2)
	if err := q.Release(ctx, "a", "b"); err != nil {
		t.Fatal(err)
	}
	wantStats(t, q, 2, 0, 0, 0)
	items, _ := q.Lease(ctx, 2)
	if len(items) != 2 || items[0].Path != "a" || items[0].Attempts != 0 {
		t.Fatalf("after release: %+v", items)
	}
}

// TestGroupCommit: enqueues that arrive together share commits, and every
// one of them is durable when it returns.
func TestGroupCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q := open(t, path, nil)
	const n = 200
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			if _, err := q.Enqueue(ctx, paths(fmt.Sprintf("/nix/store/%032d-p", i))); err != nil {
				t.Error(err)
			}
		})
	}
	close(start)
	wg.Wait()
	q.commitMu.Lock()
	commits := q.commits
	q.commitMu.Unlock()
	if commits >= n {
		t.Errorf("%d enqueues took %d commits; want them shared", n, commits)
	}
	t.Logf("%d concurrent enqueues, %d commits", n, commits)
	if st := q.Stats(); st.Queued != n {
		t.Fatalf("%d queued, want %d", st.Queued, n)
	}
	// Durable: every acknowledged enqueue is in the file. Reopen it (a
	// second handle after closing the first) and lease them all back.
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = open(t, path, nil)
	if st := q.Stats(); st.Queued != n {
		t.Fatalf("after reopening: %d queued, want %d", st.Queued, n)
	}
	leased, err := q.Lease(ctx, 2*n)
	if err != nil || len(leased) != n {
		t.Fatalf("after reopening: leased %d (%v), want %d", len(leased), err, n)
	}
	got := map[string]bool{}
	for _, it := range leased {
		got[it.Path] = true
	}
	for i := range n {
		if p := fmt.Sprintf("/nix/store/%032d-p", i); !got[p] {
			t.Fatalf("after reopening: %s is not in the queue", p)
		}
	}
}

// TestGroupCommitOneFails: a failing update among good ones that share a
// commit fails alone; the others are retried and committed.
func TestGroupCommitOneFails(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), nil)
	boom := errors.New("boom")
	var errs [8]error
	var wg2 sync.WaitGroup
	q.commitMu.Lock() // hold the next commit so all eight share it
	q.committing = true
	for i := range errs {
		wg2.Go(func() {
			errs[i] = q.group(func(tx *bbolt.Tx) error {
				if i == 3 {
					return boom
				}
				return tx.Bucket(bucketItems).Put(fmt.Appendf(nil, "/nix/store/%032d-g", i), []byte("{}"))
			})
		})
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		q.commitMu.Unlock()
		time.Sleep(time.Millisecond)
		q.commitMu.Lock()
		if len(q.waiting) == len(errs) {
			break
		}
		if time.Now().After(deadline) {
			q.commitMu.Unlock()
			t.Fatalf("%d of %d calls waiting for the commit after 30s", len(q.waiting), len(errs))
		}
	}
	// Become the leader of the waiting calls, as a caller would.
	q.committing = false
	q.commitMu.Unlock()
	if err := q.group(func(*bbolt.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	wg2.Wait()
	for i, err := range errs {
		if (i == 3) != errors.Is(err, boom) {
			t.Errorf("call %d: err = %v", i, err)
		}
	}
	q.db.View(func(tx *bbolt.Tx) error {
		for i := range errs {
			if got := tx.Bucket(bucketItems).Get(fmt.Appendf(nil, "/nix/store/%032d-g", i)); (got != nil) == (i == 3) {
				t.Errorf("call %d: written %v", i, got != nil)
			}
		}
		return nil
	})
}

// TestNoCommitForNothing: handing over paths the queue already holds
// (queued, active or done) and leasing from a queue with nothing eligible
// commit nothing (each commit is two fsyncs the hook or the worker waits
// for), and still answer as before; a path among them that is new, or
// failed, is committed.
func TestNoCommitForNothing(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), nil)
	txid := func() int {
		var id int
		q.db.View(func(tx *bbolt.Tx) error { id = tx.ID(); return nil })
		return id
	}
	if _, err := q.Enqueue(ctx, paths("/nix/store/a", "/nix/store/b", "/nix/store/c")); err != nil {
		t.Fatal(err)
	}
	leasePaths(t, q, 10) // a, b, c active
	if err := q.Complete(ctx, "/nix/store/a"); err != nil {
		t.Fatal(err)
	}
	if err := q.Fail(ctx, "/nix/store/b", errors.New("for the test")); err != nil {
		t.Fatal(err)
	}
	before := txid()
	if items := leasePaths(t, q, 10); len(items) != 0 {
		t.Fatalf("leased %v with nothing queued", items)
	}
	if got := txid(); got != before {
		t.Errorf("a lease of nothing: %d commits, want none", got-before)
	}
	if _, err := q.Enqueue(ctx, paths("/nix/store/q")); err != nil {
		t.Fatal(err)
	}
	before = txid()
	res, err := q.Enqueue(ctx, paths("/nix/store/a", "/nix/store/c", "/nix/store/q"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Merged != 3 || res.Added != 0 {
		t.Errorf("done, active and queued: %+v, want 3 merged", res)
	}
	if got := txid(); got != before {
		t.Errorf("done, active and queued: %d commits, want none", got-before)
	}
	// A failed path or a new one among them: one commit, queued.
	res, err = q.Enqueue(ctx, paths("/nix/store/a", "/nix/store/b", "/nix/store/new"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Added != 2 || res.Merged != 1 || txid() != before+1 {
		t.Errorf("done + failed + new: %+v after %d commits; want 2 added, 1 merged, 1 commit", res, txid()-before)
	}
	if got := leasePaths(t, q, 10); strings.Join(got, " ") != "/nix/store/q /nix/store/b /nix/store/new" {
		t.Errorf("leased %v, want the queued, the failed and the new path", got)
	}
}

// TestPending counts queued and leased items, as Stats does.
func TestPending(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), nil)
	check := func(want int) {
		t.Helper()
		st := q.Stats()
		if got := q.Pending(); got != want || got != st.Queued+st.Active {
			t.Fatalf("Pending %d; want %d (Stats: %d queued, %d active)", got, want, st.Queued, st.Active)
		}
	}
	check(0)
	if _, err := q.Enqueue(ctx, paths("a", "b", "c")); err != nil {
		t.Fatal(err)
	}
	check(3)
	leased := leasePaths(t, q, 2)
	check(3)
	if err := q.Complete(ctx, leased[0]); err != nil {
		t.Fatal(err)
	}
	check(2)
	if err := q.Fail(ctx, leased[1], errors.New("bad")); err != nil {
		t.Fatal(err)
	}
	check(1)
}
