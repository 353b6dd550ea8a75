package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nixpush/nixpush/hook"
)

// ReadSpoolFile reads one spooled request.
func ReadSpoolFile(path string) (hook.EnqueueRequest, error) {
	var req hook.EnqueueRequest
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
		if !e.IsDir() && strings.HasSuffix(e.Name(), hook.SpoolExt) && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out, nil
}
