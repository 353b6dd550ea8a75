package main

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/nixpush/nixpush/retention"
)

// TestWriteGCJSON: the streamed report is byte for byte what json.Encoder
// with the same indentation writes, with no paths, one, and several
// (one with characters JSON escapes).
func TestWriteGCJSON(t *testing.T) {
	for _, tc := range []struct {
		name  string
		paths []string
	}{
		{"none", []string{}},
		{"one", []string{"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a"}},
		{"several", []string{"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a", "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b<&>\"", "/nix/store/cccccccccccccccccccccccccccccccc-c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := &retention.GCReport{Store: "file:///x", Kept: retention.Kept{Paths: 3, NARs: 2},
				Deleted: retention.Deleted{Paths: tc.paths, NARs: 4, Logs: 1}, Requests: 9, Warnings: []string{"w"}}
			var want, got bytes.Buffer
			enc := json.NewEncoder(&want)
			enc.SetIndent("", "  ")
			if err := enc.Encode(rep); err != nil {
				t.Fatal(err)
			}
			if err := writeGCJSON(&got, rep); err != nil {
				t.Fatal(err)
			}
			if got.String() != want.String() {
				t.Errorf("got\n%s\nwant\n%s", got.String(), want.String())
			}
		})
	}
}
