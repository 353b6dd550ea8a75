package narpack

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/nix-community/go-nix/pkg/nar"

	"github.com/nixpush/nixpush/nix"
)

// TestListingWalkIsDumpPath: the walk that lists a path writes the same NAR
// bytes as go-nix's DumpPath, and each regular file's narOffset points at
// its contents in that NAR.
func TestListingWalkIsDumpPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tree")
	files := map[string]string{
		"a":                 "first",
		"bin/run":           "#!/bin/sh\necho hi\n",
		"empty":             "",
		"sub/deeper/é ü":    "unicode name",
		"sub/zz no newline": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(dir, "bin/run"), 0o755)
	os.Mkdir(filepath.Join(dir, "empty-dir"), 0o755)
	os.Symlink("a", filepath.Join(dir, "link"))

	for _, root := range []string{dir, filepath.Join(dir, "a"), filepath.Join(dir, "link")} {
		var want, got bytes.Buffer
		if err := nar.DumpPath(&want, root); err != nil {
			t.Fatal(err)
		}
		ls, err := dumpPath(&got, root, true)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(want.Bytes(), got.Bytes()) {
			t.Fatalf("%s: the listing walk wrote a different NAR than nar.DumpPath", root)
		}
		text, err := listingJSON(ls)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Version int
			Root    *lsNode
		}
		if err := json.Unmarshal(text, &doc); err != nil || doc.Version != 1 {
			t.Fatalf("%s: listing %s: %v", root, text, err)
		}
		checked := 0
		var walk func(rel string, n *lsNode)
		walk = func(rel string, n *lsNode) {
			switch n.Type {
			case "directory":
				if n.Entries == nil {
					t.Errorf("%s: directory without entries in %s", rel, text)
				}
				for name, c := range n.Entries {
					walk(filepath.Join(rel, name), c)
				}
			case "regular":
				content, err := os.ReadFile(filepath.Join(root, rel))
				if err != nil {
					t.Fatal(err)
				}
				off, size := *n.NAROffset, *n.Size
				if size != int64(len(content)) || !bytes.Equal(got.Bytes()[off:off+uint64(size)], content) {
					t.Errorf("%s: narOffset %d size %d do not point at its contents", rel, off, size)
				}
				checked++
			}
		}
		walk(".", doc.Root)
		if root == dir && checked != len(files) {
			t.Errorf("checked %d files, want %d: %s", checked, len(files), text)
		}
	}
}

// TestPackListsLikePackSmall: the streaming packer (NARs over 4 MiB) and the
// in-memory one write the same listing for the same path, and both still
// check the NAR against the database.
func TestPackListsLikePackSmall(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub", "big"), bytes.Repeat([]byte("nixpush "), 10000), 0o644)
	os.WriteFile(filepath.Join(dir, "x"), []byte("x"), 0o755)
	h := newCounter()
	if err := nar.DumpPath(h, dir); err != nil {
		t.Fatal(err)
	}
	info := nix.PathInfo{Path: dir, NarHash: h.hash(), NarSize: h.n}
	for _, c := range []Compression{Zstd, None} {
		streamed, err := Pack(info, c, true, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		narBuf, fileBuf := new(bytes.Buffer), new(bytes.Buffer)
		_, small, err := PackSmall(info, c, true, narBuf, fileBuf)
		if err != nil {
			t.Fatal(err)
		}
		if len(streamed.Listing) == 0 || !bytes.Equal(streamed.Listing, small.Listing) {
			t.Fatalf("%s: Pack lists %s, PackSmall %s", c, streamed.Listing, small.Listing)
		}
		if unlisted, err := Pack(info, c, false, io.Discard); err != nil || unlisted.Listing != nil || !bytes.Equal(unlisted.FileHash.Digest(), streamed.FileHash.Digest()) {
			t.Fatalf("%s: without a listing: %v, %s", c, err, unlisted.Listing)
		}
	}
	bad := info
	bad.NarSize++
	if _, err := Pack(bad, None, true, io.Discard); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("pack with a listing of a path unlike the database: %v; want ErrHashMismatch", err)
	}
}
