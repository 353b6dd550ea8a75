package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// logSuffix marks a queued item that is the build log of a derivation
// ("/nix/store/…-x.drv#log"): a queue item of its own, so a log handed
// over is pushed after a restart like any path. "#" is in no store path.
const logSuffix = "#log"

// BuildLogs opens the build log Nix kept of a derivation; an error wrapping
// nix.ErrNoBuildLog means there is none.
type BuildLogs interface {
	Open(ctx context.Context, drvPath string) (io.ReadCloser, error)
}

// pushLog uploads the build log of drv once the derivation's outputs are
// in the cache, so a log never goes ahead of (or holds up) a .narinfo: the
// outputs' pushes are shared with any under way, and free when done. No
// log is no error.
func (d *Daemon) pushLog(ctx context.Context, drv string) error {
	outs, err := d.cfg.Nix.Outputs(ctx, drv)
	switch {
	case err == nil:
		for i, err := range d.up.Ensure(ctx, outs) {
			if err != nil {
				return fmt.Errorf("build log waits for output %s: %w", outs[i], err)
			}
		}
	case nix.IsInvalid(err):
		// The .drv is gone (garbage-collected): no outputs to wait for,
		// and the log, if Nix kept it, is still worth having.
	default:
		return err
	}
	r, err := d.cfg.BuildLogs.Open(ctx, drv)
	if errors.Is(err, nix.ErrNoBuildLog) {
		d.log.Debug().Str("drv", drv).Msg("no build log to upload")
		return nil
	}
	if err != nil {
		return err
	}
	defer r.Close()
	return d.up.PutLog(ctx, drv, r)
}

// logItem is the queue item of drv's build log, when logs are uploaded.
func (d *Daemon) logItem(drv string) []string {
	if d.cfg.BuildLogs == nil || !strings.HasSuffix(drv, ".drv") {
		return nil
	}
	return []string{drv + logSuffix}
}

// itemPath is the store path a queue item is about.
func itemPath(item string) string {
	for _, suffix := range []string{allOutputs, logSuffix, realisationsSuffix} {
		item = strings.TrimSuffix(item, suffix)
	}
	return item
}

var _ BuildLogs = (*nix.BuildLogs)(nil)

// realisationsSuffix marks the queue item of the realisations of a
// floating content-addressed derivation's outputs.
const realisationsSuffix = "#realisations"

// realisationsItem is the queue item of drv's realisations, when drv is a
// floating content-addressed derivation (reading the .drv file decides).
func realisationsItem(drv string) []string {
	if ca, err := nix.FloatingCA(drv); err != nil || !ca {
		return nil
	}
	return []string{drv + realisationsSuffix}
}

// pushRealisations uploads the realisations of drv's outputs, each after
// its output's .narinfo, in both layouts (realisations/ and Nix 2.35's
// build-trace-v2/, keyed by drv: Nix 2.34 and later name the resolved
// derivation in DRV_PATH, which is the key a Nix 2.35 consumer looks up): a
// consumer with ca-derivations then substitutes the outputs of drv by the
// derivation alone.
func (d *Daemon) pushRealisations(ctx context.Context, drv string) error {
	rs, err := d.cfg.Nix.Realisations(ctx, drv)
	if err != nil {
		if nix.IsInvalid(err) || errors.Is(err, nix.ErrRealisationFormat) {
			err = store.Permanent(err)
		}
		return err
	}
	outs := make([]string, len(rs))
	for i, r := range rs {
		outs[i] = r.OutPath
	}
	for i, err := range d.up.Ensure(ctx, outs) {
		if err != nil {
			return fmt.Errorf("realisation of %s waits for output %s: %w", drv, outs[i], err)
		}
	}
	for _, r := range rs {
		if err := d.up.PutRealisation(ctx, r); err != nil {
			return err
		}
	}
	return nil
}
