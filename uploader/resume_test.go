package uploader

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nixpush/nixpush/layout"

	"github.com/rs/zerolog"

	"github.com/nixpush/nixpush/internal/testenv"
	"github.com/nixpush/nixpush/narpack"
	"github.com/nixpush/nixpush/queue"
	"github.com/nixpush/nixpush/store"
)

// queueJournal is the daemon's adapter of the queue (daemon/resume.go),
// again here: the tests record uploads in a real queue file.
type queueJournal struct{ q *queue.Queue }

func (j queueJournal) BeginUpload(name, id string, rec []byte) error {
	return j.q.BeginUpload(name, id, rec)
}
func (j queueJournal) AddUploadPart(name, id string, p store.Part) error {
	return j.q.AddUploadPart(name, id, queue.Part(p))
}
func (j queueJournal) LoadUpload(name string) (JournalUpload, bool, error) {
	up, ok, err := j.q.LoadUpload(name)
	return toJournal(up), ok, err
}
func (j queueJournal) DropUpload(name, id string) error { return j.q.DropUpload(name, id) }
func (j queueJournal) Uploads() ([]JournalUpload, error) {
	ups, err := j.q.Uploads()
	var out []JournalUpload
	for _, up := range ups {
		out = append(out, toJournal(up))
	}
	return out, err
}
func toJournal(up queue.Upload) JournalUpload {
	ju := JournalUpload{Name: up.Name, ID: up.ID, Record: up.Record}
	for _, p := range up.Parts {
		ju.Parts = append(ju.Parts, store.Part(p))
	}
	return ju
}

// cutStore is the real MinIO store with faults on demand: after cutAfter
// parts it cancels the push (as a SIGKILL stops the daemon: the parts
// sent stay in the store and in the queue), and it counts what it sends.
type cutStore struct {
	*store.S3Store
	mu        sync.Mutex
	cutAfter  int // parts to let through before cutting (0: never cut)
	cut       context.CancelFunc
	parts     atomic.Int64
	partBytes atomic.Int64
}

func (c *cutStore) PutPart(ctx context.Context, key, id string, num int, data []byte) (string, error) {
	c.mu.Lock()
	if c.cutAfter > 0 && c.parts.Load() >= int64(c.cutAfter) {
		c.cut()
		c.mu.Unlock()
		return "", ctx.Err()
	}
	c.mu.Unlock()
	etag, err := c.S3Store.PutPart(ctx, key, id, num, data)
	if err == nil {
		c.parts.Add(1)
		c.partBytes.Add(int64(len(data)))
	}
	return etag, err
}

// resumeEnv is a MinIO bucket, a queue file for the journal and a path of
// incompressible data several parts long.
type resumeEnv struct {
	m     *testenv.MinIOServer
	s3    *store.S3Store
	fs    *fakeStore
	path  string
	qfile string
	log   *testenv.SyncBuffer
}

func newResumeEnv(t *testing.T, bucket string) *resumeEnv {
	m, s := minioStore(t, bucket)
	fs := newFakeStore(t)
	data := make([]byte, 5*store.PartSize+store.PartSize/3) // six parts, the last short
	rand.Read(data)
	return &resumeEnv{m: m, s3: s, fs: fs, path: fs.add(t, "big", data), qfile: filepath.Join(t.TempDir(), "queue.db"), log: &testenv.SyncBuffer{}}
}

// uploader is a fresh Uploader (as after a restart) over store, its
// journal the queue file opened again.
func (e *resumeEnv) uploader(t *testing.T, store store.Store, c narpack.Compression) (*Uploader, *queue.Queue) {
	t.Helper()
	q, err := queue.Open(e.qfile, queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	u := New(Config{Store: store, Nix: e.fs, Key: testKey(t), Compression: c, StoreDir: e.fs.dir,
		Log: zerolog.New(e.log)})
	u.SetJournal(queueJournal{q})
	return u, q
}

// cutPush pushes the path and cuts it off after n parts: it returns the
// upload the queue recorded.
func (e *resumeEnv) cutPush(t *testing.T, n int) queue.Upload {
	t.Helper()
	cs := &cutStore{S3Store: e.s3, cutAfter: n}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs.cut = cancel
	u, q := e.uploader(t, cs, narpack.Zstd)
	defer q.Close()
	if errs := u.Push(ctx, []string{e.path}); errs[0] == nil {
		t.Fatal("the push cut off after parts succeeded")
	}
	up, ok, err := q.LoadUpload(e.path)
	if err != nil || !ok {
		t.Fatalf("no upload recorded after the cut: %v", err)
	}
	if len(up.Parts) != n {
		t.Fatalf("%d parts recorded after cutting at %d", len(up.Parts), n)
	}
	if has, _ := e.s3.Has(context.Background(), layout.NarInfoKey(e.path)); has {
		t.Fatal("a .narinfo was written for a NAR cut off")
	}
	return up
}

// finish pushes again with compression c and checks the cache is whole,
// the record dropped, no upload left pending and no marker left; it
// returns the store's counts.
func (e *resumeEnv) finish(t *testing.T, c narpack.Compression) (*cutStore, Stats) {
	t.Helper()
	cs := &cutStore{S3Store: e.s3}
	u, q := e.uploader(t, cs, c)
	defer q.Close()
	if errs := u.Push(context.Background(), []string{e.path}); errs[0] != nil {
		t.Fatalf("push after the cut: %v\nlog:\n%s", errs[0], e.log)
	}
	checkPushed(t, e.s3, e.fs.infos[e.path])
	if _, ok, _ := q.LoadUpload(e.path); ok {
		t.Error("the upload is still recorded after it completed")
	}
	var pending []store.PendingUpload
	e.s3.ListUploads(context.Background(), func(p store.PendingUpload) error { pending = append(pending, p); return nil })
	if len(pending) != 0 {
		t.Errorf("uploads left pending in the bucket: %+v", pending)
	}
	var markers []string
	e.s3.List(context.Background(), layout.UploadMarkerPrefix, func(o store.Object) error { markers = append(markers, o.Key); return nil })
	if len(markers) != 0 {
		t.Errorf("markers left behind: %v", markers)
	}
	return cs, u.Stats()
}

// TestResumeAfterCut cuts a six-part upload off after three parts and
// pushes again from a fresh uploader over the same queue file: only the
// three parts left are sent, and the NAR and .narinfo are whole.
func TestResumeAfterCut(t *testing.T) {
	e := newResumeEnv(t, "resume")
	up := e.cutPush(t, 3)
	// MinIO's part ETags are the parts' MD5s: the first part sent shows
	// it, and the parts sent after that answer record no MD5 of their
	// own (their ETag is one; MD5 is slow), and are checked by it below.
	if up.Parts[0].MD5 == "" || up.Parts[0].MD5 != up.Parts[0].ETag {
		t.Errorf("part 1 recorded MD5 %q, ETag %q: want its MD5, equal to the ETag", up.Parts[0].MD5, up.Parts[0].ETag)
	}
	if last := up.Parts[len(up.Parts)-1]; last.MD5 != "" || !isMD5(last.ETag) {
		t.Errorf("part %d recorded MD5 %q, ETag %q: want no MD5 once the store's ETags were seen to be MD5s", len(up.Parts), last.MD5, last.ETag)
	}
	// The marker for gc is up while the upload is kept.
	if has, _ := e.s3.Has(context.Background(), layout.UploadMarkerKey(narKey(e.fs.infos[e.path], narpack.Zstd), up.ID)); !has {
		t.Error("no marker for the upload kept to resume")
	}
	cs, st := e.finish(t, narpack.Zstd)
	if got := cs.parts.Load(); got != 3 {
		t.Errorf("resumed upload sent %d parts, want the 3 missing", got)
	}
	if st.Resumed != 1 || st.ResumedBytes != 3*store.PartSize || st.StartedOver != 0 {
		t.Errorf("stats: resumed %d (%d bytes), started over %d; want 1 (%d bytes), 0", st.Resumed, st.ResumedBytes, st.StartedOver, 3*store.PartSize)
	}
	if !strings.Contains(e.log.String(), `"message":"resuming upload"`) {
		t.Errorf("log does not say it resumed:\n%s", e.log)
	}
}

// TestResumeStartsOver: a recorded upload that cannot be resumed is
// aborted and the NAR sent whole, and the log says why in one line.
func TestResumeStartsOver(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, e *resumeEnv, up queue.Upload)
		c      narpack.Compression
		why    string
	}{{
		name: "upload gone",
		change: func(t *testing.T, e *resumeEnv, up queue.Upload) {
			// Aborted behind the daemon's back (gc, a lifecycle rule).
			if err := e.s3.Abort(context.Background(), narKey(e.fs.infos[e.path], narpack.Zstd), up.ID); err != nil {
				t.Fatal(err)
			}
		},
		c:   narpack.Zstd,
		why: "NoSuchUpload",
	}, {
		name: "compression changed",
		c:    narpack.XZ,
		why:  "compression changed (zstd -> xz)",
	}, {
		name: "part replaced in the store",
		change: func(t *testing.T, e *resumeEnv, up queue.Upload) {
			junk := make([]byte, store.PartSize)
			rand.Read(junk)
			if _, err := e.s3.PutPart(context.Background(), narKey(e.fs.infos[e.path], narpack.Zstd), up.ID, 2, junk); err != nil {
				t.Fatal(err)
			}
		},
		c:   narpack.Zstd,
		why: "part 2 in the store is not the one recorded",
	}, {
		name: "compressed stream changed",
		change: func(t *testing.T, e *resumeEnv, up queue.Upload) {
			// As if the compressor made other bytes with the same
			// settings: the MD5 recorded for part 1 is not the part's now.
			q, err := queue.Open(e.qfile, queue.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			p := up.Parts[0]
			p.MD5 = strings.Repeat("0", 32)
			if err := q.AddUploadPart(e.path, up.ID, p); err != nil {
				t.Fatal(err)
			}
		},
		c:   narpack.Zstd,
		why: "part 1 had MD5 00000000000000000000000000000000 when sent",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newResumeEnv(t, "over-"+strings.ReplaceAll(tc.name, " ", "-"))
			up := e.cutPush(t, 3)
			if tc.change != nil {
				tc.change(t, e, up)
			}
			cs, st := e.finish(t, tc.c)
			if got := cs.parts.Load(); got != 6 {
				t.Errorf("sent %d parts after starting over, want all 6", got)
			}
			if st.StartedOver != 1 || st.ResumedBytes != 0 {
				t.Errorf("stats: started over %d, resumed bytes %d; want 1, 0", st.StartedOver, st.ResumedBytes)
			}
			var line string
			for _, l := range strings.Split(e.log.String(), "\n") {
				if strings.Contains(l, "resumable upload starts over") {
					line = l
				}
			}
			if !strings.Contains(line, tc.why) {
				t.Errorf("log line %q does not say %q\nlog:\n%s", line, tc.why, e.log)
			}
			t.Logf("%s", line)
		})
	}
}

// TestAbandonUploads: an upload kept to resume, whose path nothing will
// push again, is aborted with its marker and forgotten.
func TestAbandonUploads(t *testing.T) {
	e := newResumeEnv(t, "abandon")
	up := e.cutPush(t, 2)
	u, q := e.uploader(t, e.s3, narpack.Zstd)
	defer q.Close()
	n, err := u.AbandonUploads(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("AbandonUploads: %d, %v; want 1", n, err)
	}
	if _, ok, _ := q.LoadUpload(e.path); ok {
		t.Error("abandoned upload still recorded")
	}
	var pending int
	e.s3.ListUploads(context.Background(), func(store.PendingUpload) error { pending++; return nil })
	if pending != 0 {
		t.Errorf("%d uploads pending after AbandonUploads", pending)
	}
	if has, _ := e.s3.Has(context.Background(), layout.UploadMarkerKey(narKey(e.fs.infos[e.path], narpack.Zstd), up.ID)); has {
		t.Error("marker left after AbandonUploads")
	}
}

// TestResumableHashMismatchAborts: a path changed behind Nix's back fails
// for good, and its upload is aborted and forgotten, not kept.
func TestResumableHashMismatchAborts(t *testing.T) {
	e := newResumeEnv(t, "mismatch")
	// The store changes behind Nix's back (same size, other bytes).
	data := make([]byte, e.fs.infos[e.path].NarSize-200)
	rand.Read(data)
	os.Chmod(e.path, 0o644)
	old, _ := os.ReadFile(e.path)
	copy(old[len(old)/2:], data[:len(old)/2])
	os.WriteFile(e.path, old, 0o444)
	u, q := e.uploader(t, e.s3, narpack.Zstd)
	defer q.Close()
	err := u.Push(context.Background(), []string{e.path})[0]
	if !errors.Is(err, narpack.ErrHashMismatch) || !store.IsPermanent(err) {
		t.Fatalf("push of a path whose NAR does not match: %v, want a permanent ErrHashMismatch", err)
	}
	if _, ok, _ := q.LoadUpload(e.path); ok {
		t.Error("the upload of a NAR that does not match is still recorded")
	}
	var pending int
	e.s3.ListUploads(context.Background(), func(store.PendingUpload) error { pending++; return nil })
	if pending != 0 {
		t.Errorf("%d uploads pending", pending)
	}
}

// minioStore starts a MinIO with a private bucket and opens it as a store
// the way the daemon does, credentials from the environment.
func minioStore(t *testing.T, bucket string) (*testenv.MinIOServer, *store.S3Store) {
	t.Helper()
	m := testenv.MinIO(t)
	m.MakeBucket(t, bucket, false)
	for _, kv := range m.CredentialsEnv() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	st, err := store.Open(context.Background(), m.StoreURI(bucket), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return m, st.(*store.S3Store)
}
