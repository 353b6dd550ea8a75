package uploader

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/nix-community/go-nix/pkg/nar"
)

// lsNode is one node of a NAR listing in Nix's JSON: regular files carry
// size, narOffset (where their contents start in the NAR) and executable
// when set; symlinks their target; directories their entries (an empty
// object when empty).
type lsNode struct {
	Type       string             `json:"type"`
	Size       *int64             `json:"size,omitempty"`
	Executable bool               `json:"executable,omitempty"`
	NAROffset  *uint64            `json:"narOffset,omitempty"`
	Target     string             `json:"target,omitempty"`
	Entries    map[string]*lsNode `json:"entries,omitempty"`
}

// MarshalJSON writes "entries" for every directory, even an empty one.
func (n *lsNode) MarshalJSON() ([]byte, error) {
	type plain lsNode
	if n.Type == "directory" {
		entries := n.Entries
		if entries == nil {
			entries = map[string]*lsNode{}
		}
		return json.Marshal(struct {
			Type    string             `json:"type"`
			Entries map[string]*lsNode `json:"entries"`
		}{n.Type, entries})
	}
	return json.Marshal((*plain)(n))
}

// listingJSON is the .ls file of a NAR whose root is root.
func listingJSON(root *lsNode) ([]byte, error) {
	return json.Marshal(struct {
		Version int     `json:"version"`
		Root    *lsNode `json:"root"`
	}{1, root})
}

// offsetWriter counts the bytes the NAR writer has written: right after
// WriteHeader of a regular file returns, that count is where the file's
// contents start in the NAR.
type offsetWriter struct {
	w io.Writer
	n uint64
}

func (o *offsetWriter) Write(p []byte) (int, error) {
	n, err := o.w.Write(p)
	o.n += uint64(n)
	return n, err
}

// dumpPath writes the NAR of path to w, as nar.DumpPath does, and, when
// list is set, returns its listing, taken from the same walk and the same
// NAR writer: each regular file's offset is the writer's byte count when
// its header is written. The caller's hash check against the Nix database
// covers this walk as it covers nar.DumpPath.
func dumpPath(w io.Writer, path string, list bool) (*lsNode, error) {
	if !list {
		return nil, nar.DumpPath(w, path)
	}
	ow := &offsetWriter{w: w}
	nw, err := nar.NewWriter(ow)
	if err != nil {
		return nil, err
	}
	root, err := dumpNode(nw, ow, path, "/")
	if err != nil {
		nw.Close()
		return nil, err
	}
	if err := nw.Close(); err != nil {
		return nil, err
	}
	return root, nil
}

func dumpNode(nw *nar.Writer, ow *offsetWriter, root, sub string) (*lsNode, error) {
	p := filepath.Join(root, sub)
	fi, err := os.Lstat(p)
	if err != nil {
		return nil, err
	}
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return nil, err
		}
		if err := nw.WriteHeader(&nar.Header{Path: sub, Type: nar.TypeSymlink, LinkTarget: target}); err != nil {
			return nil, err
		}
		return &lsNode{Type: "symlink", Target: target}, nil
	case fi.IsDir():
		if err := nw.WriteHeader(&nar.Header{Path: sub, Type: nar.TypeDirectory}); err != nil {
			return nil, err
		}
		entries, err := os.ReadDir(p) // sorted by name, as a NAR is
		if err != nil {
			return nil, err
		}
		node := &lsNode{Type: "directory", Entries: make(map[string]*lsNode, len(entries))}
		for _, e := range entries {
			child, err := dumpNode(nw, ow, root, filepath.Join(sub, e.Name()))
			if err != nil {
				return nil, err
			}
			node.Entries[e.Name()] = child
		}
		return node, nil
	case fi.Mode().IsRegular():
		size := fi.Size()
		exec := fi.Mode()&syscall.S_IXUSR != 0 // as Nix's dump
		if err := nw.WriteHeader(&nar.Header{Path: sub, Type: nar.TypeRegular, Size: size, Executable: exec}); err != nil {
			return nil, err
		}
		offset := ow.n
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		n, err := io.Copy(nw, f)
		if err != nil {
			return nil, err
		}
		if n != size {
			return nil, fmt.Errorf("%s changed while it was read (%d bytes, then %d)", p, size, n)
		}
		return &lsNode{Type: "regular", Size: &size, Executable: exec, NAROffset: &offset}, nil
	}
	return nil, fmt.Errorf("%s: not a regular file, directory or symlink", p)
}
