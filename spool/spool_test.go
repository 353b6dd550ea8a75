package spool

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixpush/nixpush/api"
)

// TestWriteFilesRead: what Write leaves, Files lists and Read reads back;
// temporary files and other names are not listed.
func TestWriteFilesRead(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	if files, err := Files(dir); err != nil || len(files) != 0 {
		t.Fatalf("missing dir: %v, %v", files, err)
	}
	reqs := []api.EnqueueRequest{
		{Paths: []string{"/nix/store/00000000000000000000000000000000-a"}},
		{DrvPath: "/nix/store/00000000000000000000000000000000-b.drv"},
	}
	for _, req := range reqs {
		if _, err := Write(dir, req); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{".tmp-123", "x.json.bad", ".hidden" + Ext} {
		os.WriteFile(filepath.Join(dir, name), []byte("{}"), 0o600)
	}
	files, err := Files(dir)
	if err != nil || len(files) != len(reqs) {
		t.Fatalf("files %v, %v; want %d", files, err, len(reqs))
	}
	for i, f := range files {
		got, err := Read(f, json.Unmarshal)
		if err != nil || strings.Join(got.Paths, " ") != strings.Join(reqs[i].Paths, " ") || got.DrvPath != reqs[i].DrvPath {
			t.Fatalf("%s: %+v, %v; want %+v", f, got, err, reqs[i])
		}
	}
}

func TestReadBadFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "1-x"+Ext)
	os.WriteFile(f, []byte("{not json"), 0o600)
	_, err := Read(f, json.Unmarshal)
	var se *json.SyntaxError
	if err == nil || !strings.HasPrefix(err.Error(), "spool file "+f+": ") {
		t.Fatalf("got %v", err)
	}
	if !errors.As(err, &se) {
		t.Fatalf("%v does not wrap the decoder's error", err)
	}
}
