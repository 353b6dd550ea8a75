package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// TestS3ListRanges: a listing gives every key exactly once (keys of
// characters outside nixbase32: upper case, '-', '~', non-ASCII; more
// than a page); a listing under a prefix too; an error from fn stops the
// listing and is returned, and no listing goroutine stays behind.
func TestS3ListRanges(t *testing.T) {
	_, st := minioStore(t, "listranges")
	ctx := context.Background()
	keys := []string{"-x", "0", "0a.narinfo", "9zz", "A/x", "_x", "a", "l", "log/", "log/0", "log/zz", "n", "nar/", "nar/0",
		"nar/z~", "nix-cache-info", "nixpush/pins/p", "realisations/x!out.doi", "z", "zz/zz", "~", "é"}
	for i := range 1500 { // one range of a page and a half
		keys = append(keys, fmt.Sprintf("nar/1%05d.nar", i))
	}
	for _, c := range []string{"0", "1", "a", "z", "log/0", "log/z", "nar/0", "nar/1", "nar/z"} {
		keys = append(keys, c+"-after")
		if before := c[:len(c)-1] + string(c[len(c)-1]-1) + "~before"; !strings.Contains(before, "//") && before[0] != '/' { // MinIO drops a leading /
			keys = append(keys, before)
		}
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(32)
	for _, k := range keys {
		eg.Go(func() error { return st.Put(ectx, k, bytes.NewReader([]byte(k)), int64(len(k)), "text/plain") })
	}
	if err := eg.Wait(); err != nil {
		t.Fatal(err)
	}
	list := func(prefix string) []string {
		var got []string
		if err := st.List(ctx, prefix, func(o Object) error {
			got = append(got, o.Key)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		return got
	}
	before := runtime.NumGoroutine()
	if got := list(""); !slices.Equal(got, keys) {
		t.Errorf("listed %d keys, want %d; first difference %s", len(got), len(keys), firstDiff(got, keys))
	}
	var want []string
	for _, k := range keys {
		if len(k) >= 4 && k[:4] == "nar/" {
			want = append(want, k)
		}
	}
	if got := list("nar/"); !slices.Equal(got, want) {
		t.Errorf("listed %d keys under nar/, want %d; first difference %s", len(got), len(want), firstDiff(got, want))
	}
	for start := time.Now(); runtime.NumGoroutine() > before+2; time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("%d goroutines after the listing, %d before", runtime.NumGoroutine(), before)
		}
	}
	stop := errors.New("stop")
	n := 0
	err := st.List(ctx, "", func(Object) error {
		if n++; n == 10 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 10 {
		t.Errorf("stopped listing: %v after %d keys; want %v after 10", err, n, stop)
	}
	// minio-go's ListObjects left its goroutine blocked for good on its
	// last send, holding a page, when fn stopped early.
	for start := time.Now(); runtime.NumGoroutine() > before+2; time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("%d goroutines after a listing stopped early, %d before", runtime.NumGoroutine(), before)
		}
	}
}

func firstDiff(got, want []string) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("at %d: %q, want %q", i, got[i], want[i])
		}
	}
	return "at the end"
}
