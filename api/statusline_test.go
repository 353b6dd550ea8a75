package api

import (
	"strings"
	"testing"
	"time"
)

func TestStatusLine(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	last := now.Add(-12 * time.Second)
	st := Status{Queued: 3, Active: 1, Uploaded: Uploaded{Paths: 1234, NarBytes: 6012954214, LastPush: &last}}
	want := "3 queued, 1 uploading, 0 failed; 1234 paths, 5.6 GiB pushed; last push 12s ago"
	if got := st.Line(now); got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	// While closures go up: their progress in paths and bytes; a failing
	// store check leads.
	st.Progress = Progress{Paths: 300, NarBytes: 300 << 20, PathsDone: 12, NarBytesDone: 45 << 20, Since: &last}
	st.StoreCheck = StoreCheck{Error: "store unreachable: dial tcp 127.0.0.1:9000: connect: connection refused"}
	want = "store unreachable: dial tcp 127.0.0.1:9000: connect: connection refused; 3 queued, 1 uploading (12/300 paths, 45.0 MiB/300.0 MiB), 0 failed; 1234 paths, 5.6 GiB pushed; last push 12s ago"
	if got := st.Line(now); got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	// A throttling store says so, with the concurrency it left.
	st.StoreCheck = StoreCheck{OK: true}
	st.Traffic = &Traffic{Throttling: true, Throttled: 40, Concurrency: 3, MaxConcurrency: 64}
	want = "store throttling: 3/64 requests at once; 3 queued, 1 uploading (12/300 paths, 45.0 MiB/300.0 MiB), 0 failed; 1234 paths, 5.6 GiB pushed; last push 12s ago"
	if got := st.Line(now); got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	st.Traffic.Throttling = false
	if got := st.Line(now); strings.Contains(got, "throttling") {
		t.Fatalf("throttling over, still said: %q", got)
	}
	if got := (Status{}).Line(now); got != "0 queued, 0 uploading, 0 failed; 0 paths, 0 B pushed; last push never" {
		t.Fatalf("empty: %q", got)
	}
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 5 << 30: "5.0 GiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q; want %q", n, got, want)
		}
	}
}
