package layout

import (
	"strings"
	"testing"
	"time"
)

// The records' bodies as buckets hold them: a change here strands every
// record already written.
func TestRecordJSON(t *testing.T) {
	at := time.Date(2026, 12, 4, 1, 2, 3, 0, time.UTC)
	for _, tc := range []struct {
		name string
		rec  any
		want string
	}{
		{"root", Root{Path: storePath, PushedAt: at, Host: "b1"},
			`{"path":"` + storePath + `","pushed_at":"2026-12-04T01:02:03Z","host":"b1"}`},
		{"root without host", Root{Path: storePath, PushedAt: at},
			`{"path":"` + storePath + `","pushed_at":"2026-12-04T01:02:03Z"}`},
		{"root batch", RootBatch{Paths: []string{storePath, drv}, PushedAt: at, Host: "b1"},
			`{"paths":["` + storePath + `","` + drv + `"],"pushed_at":"2026-12-04T01:02:03Z","host":"b1"}`},
		{"pin", Pin{Name: "not-in-the-body", Path: storePath, PinnedAt: at},
			`{"path":"` + storePath + `","pinned_at":"2026-12-04T01:02:03Z"}`},
		{"sweep under way", Sweep{ListedAt: at, Deadline: at.Add(time.Hour), Host: "gc1", Kind: "gc", GraceSeconds: 86400, OlderThanSeconds: 2592000, WindowSeconds: 3600},
			`{"listed_at":"2026-12-04T01:02:03Z","deadline":"2026-12-04T02:02:03Z","host":"gc1","kind":"gc","grace_s":86400,"older_than_s":2592000,"window_s":3600}`},
		{"sweep finished", Sweep{ListedAt: at, Deadline: at.Add(time.Hour), FinishedAt: at.Add(time.Minute), Kind: "repair"},
			`{"listed_at":"2026-12-04T01:02:03Z","deadline":"2026-12-04T02:02:03Z","finished_at":"2026-12-04T01:03:03Z","kind":"repair"}`},
		{"upload marker", UploadMarker{Key: "nar/x.nar.zst", UploadID: "id", Path: storePath, Host: "b1", StartedAt: at},
			`{"key":"nar/x.nar.zst","upload_id":"id","path":"` + storePath + `","host":"b1","started_at":"2026-12-04T01:02:03Z"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Marshal(tc.rec)
			if err != nil || string(got) != tc.want+"\n" {
				t.Errorf("Marshal = %s, %v; want %s and a newline", got, err, tc.want)
			}
		})
	}
}

func TestParseRecords(t *testing.T) {
	mod := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	at := time.Date(2026, 12, 4, 1, 2, 3, 0, time.UTC)
	t.Run("pin", func(t *testing.T) {
		p, err := ParsePin("rel", []byte(`{"path":"`+storePath+`","pinned_at":"2026-12-04T01:02:03Z"}`), mod)
		if err != nil || p != (Pin{Name: "rel", Path: storePath, PinnedAt: at}) {
			t.Errorf("ParsePin = %+v, %v", p, err)
		}
		p, err = ParsePin("rel", []byte(`{"path":"`+storePath+`"}`), mod)
		if err != nil || !p.PinnedAt.Equal(mod) {
			t.Errorf("a pin without a time: %+v, %v; want pinned at its object's time", p, err)
		}
		for _, body := range []string{`{"path":"hello"}`, `not json`, `{}`} {
			if _, err := ParsePin("rel", []byte(body), mod); err == nil || !strings.Contains(err.Error(), "nixpush unpin rel") {
				t.Errorf("ParsePin(%s) = %v; want an error naming the way out", body, err)
			}
		}
	})
	t.Run("root", func(t *testing.T) {
		r, ok := ParseRoot(RootKey(storePath), []byte(`{"path":"`+storePath+`"}`), mod)
		if !ok || r.Path != storePath || !r.PushedAt.Equal(mod) {
			t.Errorf("ParseRoot = %+v, %v", r, ok)
		}
		if _, ok := ParseRoot(RootPrefix+strings.Repeat("a", 32), []byte(`{"path":"`+storePath+`"}`), mod); ok {
			t.Error("a root record of another path than its key's reads as one")
		}
	})
	t.Run("root batch", func(t *testing.T) {
		r, ok := ParseRootBatch([]byte(`{"paths":["`+storePath+`"],"pushed_at":"2026-12-04T01:02:03Z"}`), mod)
		if !ok || len(r.Paths) != 1 || !r.PushedAt.Equal(at) {
			t.Errorf("ParseRootBatch = %+v, %v", r, ok)
		}
		if _, ok := ParseRootBatch([]byte(`[`), mod); ok {
			t.Error("a broken batch reads as one")
		}
	})
	t.Run("sweep", func(t *testing.T) {
		s, err := ParseSweep([]byte(`{"listed_at":"2026-12-04T01:02:03Z","deadline":"2026-12-04T02:02:03Z"}`))
		if err != nil || !s.Deadline.Equal(at.Add(time.Hour)) || s.Sweeper() != "gc" {
			t.Errorf("ParseSweep = %+v, %v", s, err)
		}
		if _, err := ParseSweep([]byte(`{"listed_at":"2026-12-04T01:02:03Z"}`)); err == nil {
			t.Error("a marker without a deadline reads as one")
		}
		if s := (&Sweep{Kind: "repair"}); s.Sweeper() != "repair" {
			t.Errorf("Sweeper = %s; want repair", s.Sweeper())
		}
	})
}

func TestCheckPinName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"release-1.0", true},
		{"a", true},
		{"A_b+c.d", true},
		{strings.Repeat("x", 128), true},
		{strings.Repeat("x", 129), false},
		{"", false},
		{".hidden", false},
		{"-flag", false},
		{"a/b", false},
		{"a b", false},
	} {
		if err := CheckPinName(tc.name); (err == nil) != tc.ok {
			t.Errorf("CheckPinName(%q) = %v; want ok %v", tc.name, err, tc.ok)
		}
	}
}

// The keys as nixpush has always written them.
func TestKeys(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{NarInfoKey(storePath), h32 + ".narinfo"},
		{ListingKey(storePath), h32 + ".ls"},
		{NarKey("abc", ".xz"), "nar/abc.nar.xz"},
		{LogKey(drv), "log/1xq2cmvbnmzvd4rnh4fzq2qa5yrzi2rz-hello-2.12.drv"},
		{RealisationKey("sha256:abc!out"), "realisations/sha256:abc!out.doi"},
		{BuildTraceKey(drv, "dev"), "build-trace-v2/1xq2cmvbnmzvd4rnh4fzq2qa5yrzi2rz-hello-2.12.drv/dev.doi"},
		{RootKey(storePath), "nixpush/roots/" + h32},
		{PinKey("rel"), "nixpush/pins/rel"},
		{UploadMarkerKey("nar/.x.nar.zst", "upload-1"), "nixpush/uploads/x.nar.zst-" + UploadMarkerKey("y", "upload-1")[len("nixpush/uploads/y-"):]},
		{SweepKey, "nixpush/gc/sweep"},
	} {
		if tc.got != tc.want {
			t.Errorf("key %s; want %s", tc.got, tc.want)
		}
	}
	if k := UploadMarkerKey("nar/x", "upload-1"); len(k) != len("nixpush/uploads/x-")+16 {
		t.Errorf("UploadMarkerKey = %s; want 16 hex digits of the id's hash", k)
	}
}
