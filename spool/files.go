package spool

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/nixpush/nixpush/api"
)

// Read reads one spooled request: the body of a POST /v1/enqueue, as Write
// wrote it. unmarshal is json.Unmarshal, passed in by the reader (the
// daemon, tests) because this package is linked into nixpush-hook, which
// must not link encoding/json.
func Read(path string, unmarshal func([]byte, any) error) (api.EnqueueRequest, error) {
	var req api.EnqueueRequest
	data, err := os.ReadFile(path)
	if err != nil {
		return req, err
	}
	if err := unmarshal(data, &req); err != nil {
		return req, &fileError{path: path, err: err}
	}
	return req, nil
}

// fileError is a spool file that is not a request: "spool file PATH: ...".
type fileError struct {
	path string
	err  error
}

func (e *fileError) Error() string { return "spool file " + e.path + ": " + e.err.Error() }
func (e *fileError) Unwrap() error { return e.err }

// Files lists the complete spool files in dir, oldest first.
func Files(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() && strings.HasSuffix(e.Name(), Ext) && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out, nil
}
