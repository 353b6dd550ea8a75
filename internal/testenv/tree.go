package testenv

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TreeEqual fails the test unless the trees at a and b are the same: file
// types, contents, executable bits and symlink targets.
func TreeEqual(t testing.TB, a, b string) {
	t.Helper()
	if diff := TreeDiff(a, b); diff != "" {
		t.Fatalf("%s and %s differ: %s", a, b, diff)
	}
}

// TreeDiff describes the first difference between the trees, or "".
func TreeDiff(a, b string) string {
	seen := map[string]bool{}
	var diff string
	filepath.WalkDir(a, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			diff = err.Error()
			return fs.SkipAll
		}
		rel, _ := filepath.Rel(a, p)
		seen[rel] = true
		if diff = nodeDiff(p, filepath.Join(b, rel)); diff != "" {
			diff = rel + ": " + diff
			return fs.SkipAll
		}
		return nil
	})
	if diff != "" {
		return diff
	}
	filepath.WalkDir(b, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			diff = err.Error()
			return fs.SkipAll
		}
		rel, _ := filepath.Rel(b, p)
		if !seen[rel] {
			diff = rel + ": only in " + b
			return fs.SkipAll
		}
		return nil
	})
	return diff
}

func nodeDiff(a, b string) string {
	fa, err := os.Lstat(a)
	if err != nil {
		return err.Error()
	}
	fb, err := os.Lstat(b)
	if err != nil {
		return err.Error()
	}
	if fa.Mode().Type() != fb.Mode().Type() {
		return "types differ: " + fa.Mode().String() + " vs " + fb.Mode().String()
	}
	switch {
	case fa.Mode()&fs.ModeSymlink != 0:
		ta, _ := os.Readlink(a)
		tb, _ := os.Readlink(b)
		if ta != tb {
			return "symlink targets differ: " + ta + " vs " + tb
		}
	case fa.Mode().IsRegular():
		if fa.Mode()&0o100 != fb.Mode()&0o100 {
			return "executable bits differ"
		}
		ca, err := os.ReadFile(a)
		if err != nil {
			return err.Error()
		}
		cb, err := os.ReadFile(b)
		if err != nil {
			return err.Error()
		}
		if !bytes.Equal(ca, cb) {
			return "contents differ"
		}
	}
	return ""
}
