package spool

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nixpush/nixpush/api"
)

// DefaultDir is where the hook leaves requests the daemon cannot take.
const DefaultDir = "/var/lib/nixpush/spool"

// Ext ends the name of every complete spool file; temporary files end
// otherwise, so the daemon never reads a half-written request.
const Ext = ".json"

// Write durably writes req into dir for the daemon to import later: a
// temporary file, fsynced, renamed into place, and the directory fsynced.
// It returns the file's name.
func Write(dir string, req api.EnqueueRequest) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", spoolError(err)
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return "", spoolError(err)
	}
	tmp := f.Name()
	// The final name sorts by time; the temporary name's random part keeps
	// hooks spooling at the same moment apart.
	final := filepath.Join(dir, strconv.FormatInt(time.Now().UnixNano(), 10)+"-"+
		strings.TrimPrefix(filepath.Base(tmp), ".tmp-")+Ext)
	// Group-readable: the hook runs as root, the daemon as its own user in
	// the spool directory's group (a setgid directory under the NixOS module).
	err = f.Chmod(0o640)
	if err == nil {
		_, err = f.Write(req.AppendJSON(nil))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.Remove(tmp)
		return "", spoolError(err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return final, nil
}

type spoolErr struct{ err error }

func (e spoolErr) Error() string { return "spool: " + e.err.Error() }
func (e spoolErr) Unwrap() error { return e.err }

func spoolError(err error) error { return spoolErr{err} }
