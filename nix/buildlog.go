package nix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/dsnet/compress/bzip2"
)

// ErrNoBuildLog reports a derivation whose build log Nix did not keep
// (keep-build-log = false, a substituted path, a log removed since).
var ErrNoBuildLog = errors.New("no build log")

// DefaultLogDir is Nix's log directory unless NIX_LOG_DIR or the store's
// settings say otherwise.
const DefaultLogDir = "/nix/var/log/nix"

// BuildLogs reads the build logs Nix keeps of the derivations it built.
//
// It reads the log file itself when it is where Nix puts it
// (LogDir/drvs/<first two characters of the .drv name>/<rest>, bzip2 when
// compress-build-log is on, as by default, or plain): no process per
// build. Otherwise it asks Nix (`nix-store --read-log`), which knows its
// own settings, so a log directory moved by the store's `log` or `root`
// setting, or a Nix compiled with another default, is still found.
type BuildLogs struct {
	Client        // nix-store for the fallback, and the store directory
	LogDir string // "" means $NIX_LOG_DIR, else DefaultLogDir
}

// LogDirFromEnv is the log directory Nix itself uses when its store keeps
// the default: NIX_LOG_DIR, else DefaultLogDir.
func LogDirFromEnv() string {
	if d := os.Getenv("NIX_LOG_DIR"); d != "" {
		return d
	}
	return DefaultLogDir
}

// Open returns the uncompressed build log of the derivation drvPath, or an
// error wrapping ErrNoBuildLog when Nix has none.
func (b *BuildLogs) Open(ctx context.Context, drvPath string) (io.ReadCloser, error) {
	drvPath, err := StorePath(b.storeDir(), drvPath)
	if err != nil {
		return nil, err
	}
	base := filepath.Base(drvPath)
	if !strings.HasSuffix(base, ".drv") {
		return nil, fmt.Errorf("%s: not a derivation (.drv)", drvPath)
	}
	dir := b.LogDir
	if dir == "" {
		dir = LogDirFromEnv()
	}
	file := filepath.Join(dir, "drvs", base[:2], base[2:])
	if f, err := os.Open(file + ".bz2"); err == nil {
		// Not compress/bzip2: it allocates (and clears) a buffer for the
		// largest block the level allows, 3.6 MiB at Nix's level 9, for a
		// log of a few hundred bytes; a build's hand-off paid for it in
		// garbage collection. This reader sizes it to the block read.
		zr, err := bzip2.NewReader(f, nil)
		if err != nil {
			f.Close()
			return nil, err
		}
		return readCloser{zr, f}, nil
	}
	if f, err := os.Open(file); err == nil {
		return f, nil
	}
	// Not where the default settings put it: ask Nix, which knows.
	out, err := b.run(ctx, "nix-store", "--read-log", "--", drvPath)
	if err != nil {
		if strings.Contains(err.Error(), "not available") || strings.Contains(err.Error(), "is not valid") {
			return nil, fmt.Errorf("%w for %s", ErrNoBuildLog, drvPath)
		}
		return nil, fmt.Errorf("build log of %s: %w", drvPath, err)
	}
	return io.NopCloser(bytes.NewReader(out)), nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// KeepsBuildLogs asks Nix whether it keeps build logs (its keep-build-log
// setting, true by default). When Nix cannot say, it answers true.
func (c *Client) KeepsBuildLogs(ctx context.Context) bool {
	out, err := c.run(ctx, "nix", "--extra-experimental-features", "nix-command", "show-config", "--json")
	if err != nil {
		return true
	}
	var cfg struct {
		KeepBuildLog struct {
			Value *bool `json:"value"`
		} `json:"keep-build-log"`
	}
	if json.Unmarshal(out, &cfg) != nil || cfg.KeepBuildLog.Value == nil {
		return true
	}
	return *cfg.KeepBuildLog.Value
}
