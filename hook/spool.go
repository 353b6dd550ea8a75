package hook

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// SpoolExt ends the name of every complete spool file; temporary files end
// otherwise, so the daemon never reads a half-written request.
const SpoolExt = ".json"

// Spool durably writes req into dir for the daemon to import later: a
// temporary file, fsynced, renamed into place, and the directory fsynced.
func Spool(dir string, req EnqueueRequest) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	data, err := json.Marshal(req)
	if err != nil {
		return "", err
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", err
	}
	name := fmt.Sprintf("%d-%s%s", time.Now().UnixNano(), hex.EncodeToString(rnd[:]), SpoolExt)
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	tmp := f.Name()
	// Group-readable: the hook runs as root, the daemon as its own user in
	// the spool directory's group (a setgid directory under the NixOS module).
	err = f.Chmod(0o640)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	final := filepath.Join(dir, name)
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("spool: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return final, nil
}

// ReadSpoolFile reads one spooled request.
func ReadSpoolFile(path string) (EnqueueRequest, error) {
	var req EnqueueRequest
	data, err := os.ReadFile(path)
	if err != nil {
		return req, err
	}
	if err := json.Unmarshal(data, &req); err != nil {
		return req, fmt.Errorf("spool file %s: %w", path, err)
	}
	return req, nil
}

// SpoolFiles lists the complete spool files in dir, oldest first.
func SpoolFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() && strings.HasSuffix(e.Name(), SpoolExt) && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out, nil
}
