package retention

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nixpush/nixpush/layout"
)

// TestGCLeavesResumableUploads: of the pending uploads begun before the
// grace period, gc aborts those without a marker or whose marker was last
// written before the grace period, and keeps those a daemon keeps to
// resume (a marker younger than the grace period); it deletes markers
// older than the grace period, and leaves younger ones alone.
func TestGCLeavesResumableUploads(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.add("base")
	old := time.Now().Add(-48 * time.Hour)
	// Pending uploads: a file store's are its temporary files.
	pending := map[string]string{}
	for _, name := range []string{"kept", "stale", "unmarked"} {
		rel := "nar/.tmp-" + name
		p := filepath.Join(f.base, filepath.FromSlash(rel))
		if err := os.WriteFile(p, []byte("part of "+name), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, old, old)
		pending[name] = rel
	}
	marker := func(name string, at time.Time) string {
		key := layout.UploadMarkerKey(pending[name], pending[name])
		if name == "orphan-old" || name == "orphan-new" {
			key = layout.UploadMarkerKey("nar/x.nar.zst", name)
		}
		f.put(key, `{"key":"k"}`)
		p := filepath.Join(f.base, filepath.FromSlash(key))
		os.Chtimes(p, at, at)
		return key
	}
	kept := marker("kept", time.Now().Add(-time.Hour))      // a heartbeat an hour ago
	stale := marker("stale", time.Now().Add(-30*time.Hour)) // the daemon gone for longer than the grace
	orphanOld := marker("orphan-old", time.Now().Add(-30*time.Hour))
	orphanNew := marker("orphan-new", time.Now().Add(-time.Minute))

	rep, err := GC(ctx, f.b, GCOptions{OlderThan: 24 * time.Hour, Grace: 24 * time.Hour, Walk: WalkOptions{Cache: f.cache()}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Deleted.Uploads != 2 || rep.Kept.Uploads != 1 || rep.Deleted.UploadMarkers != 2 {
		t.Errorf("uploads aborted %d, kept %d, markers deleted %d; want 2, 1, 2", rep.Deleted.Uploads, rep.Kept.Uploads, rep.Deleted.UploadMarkers)
	}
	for name, rel := range pending {
		_, err := os.Stat(filepath.Join(f.base, filepath.FromSlash(rel)))
		if there := err == nil; there != (name == "kept") {
			t.Errorf("upload %s: still there %v", name, there)
		}
	}
	for key, want := range map[string]bool{kept: true, orphanNew: true, stale: false, orphanOld: false} {
		if got := f.exists(key); got != want {
			t.Errorf("marker %s: there %v, want %v", key, got, want)
		}
	}
}
