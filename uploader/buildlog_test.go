package uploader

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("bzip2 data invalid") }

// TestPutLog: a build log goes to log/<drv name> as it is; a log that
// cannot be read fails permanently, since retrying reads it no better.
func TestPutLog(t *testing.T) {
	dir := t.TempDir()
	s, err := NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	u := New(Config{Store: s, Key: testKey(t)})
	const drv = "/nix/store/y0hd3jhar8r876by1rvnbr6q88h80n9c-t1.drv"
	ctx := context.Background()
	if err := u.PutLog(ctx, drv, strings.NewReader("line one\nline two\n")); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "log", "y0hd3jhar8r876by1rvnbr6q88h80n9c-t1.drv"))
	if err != nil || string(got) != "line one\nline two\n" {
		t.Fatalf("log/<drv>: %q, %v", got, err)
	}
	if u.Stats().Logs != 1 {
		t.Fatalf("stats: %+v", u.Stats())
	}
	err = u.PutLog(ctx, drv, io.MultiReader(strings.NewReader("x"), failingReader{}))
	if err == nil || !IsPermanent(err) {
		t.Fatalf("an unreadable log: %v; want a permanent error", err)
	}
}
