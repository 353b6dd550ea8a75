package uploader

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/nixpush/nixpush/nix"
)

// LogKey is where a binary cache holds the build log of the derivation
// drvPath: the object `nix store copy-log --to` writes and `nix log` reads
// from a substituter.
func LogKey(drvPath string) string { return "log/" + filepath.Base(drvPath) }

// PutLog uploads the build log of drvPath, read from r, as plain text:
// Nix 2.8 reads a log from a file:// cache as it is and from an HTTP cache
// as sent (decoding only a Content-Encoding), so plain text is what every
// Nix reads back from every kind of cache.
func (u *Uploader) PutLog(ctx context.Context, drvPath string, r io.Reader) error {
	select {
	case u.jobs <- struct{}{}:
		defer func() { <-u.jobs }()
	case <-ctx.Done():
		return ctx.Err()
	}
	start := time.Now()
	buf := getBuffer()
	defer putBuffer(buf)
	// Most logs are small: one PUT of known size. Longer ones stream.
	n, err := io.Copy(buf, io.LimitReader(r, smallNAR+1))
	if err != nil {
		// A local log that cannot be read (a corrupt .bz2) reads no
		// better on the next attempt.
		return Permanent(fmt.Errorf("read build log of %s: %w", drvPath, err))
	}
	var body io.Reader = bytes.NewReader(buf.Bytes())
	size := n
	if n > smallNAR {
		body, size = io.MultiReader(body, r), -1
	}
	u.count(1)
	at := u.cfg.Now()
	if err := u.cfg.Store.Put(ctx, LogKey(drvPath), body, size, "text/plain; charset=utf-8"); err != nil {
		return fmt.Errorf("upload build log of %s: %w", drvPath, err)
	}
	// A sweep may have listed an older log under this key, to delete it.
	lg := newLedger()
	lg.wroteKey(LogKey(drvPath), at)
	if err := u.settle(ctx, lg, func([]string, map[string]bool, []string) error {
		return fmt.Errorf("the build log of %s vanished while a gc swept; will retry", drvPath)
	}); err != nil {
		return err
	}
	u.mu.Lock()
	u.stats.Logs++
	u.mu.Unlock()
	u.cfg.Log.Info().Str("drv", drvPath).Int64("log_bytes", n).Int64("duration_ms", time.Since(start).Milliseconds()).
		Msg("uploaded build log")
	return nil
}

// RealisationKey is where a binary cache holds a realisation: what Nix 2.8
// to 2.34 write (`nix copy`) and read when substituting a
// content-addressed derivation's output.
func RealisationKey(id string) string { return "realisations/" + id + ".doi" }

// PutRealisation uploads r, with the uploader's signatures added, to
// realisations/<id>.doi. The caller has made sure r's output path is in
// the cache.
func (u *Uploader) PutRealisation(ctx context.Context, r nix.Realisation) error {
	body, err := r.Signed(append([]signature.SecretKey{u.cfg.Key}, u.cfg.Keys...)...)
	if err != nil {
		return err
	}
	put := func() error {
		u.count(1)
		if err := u.cfg.Store.Put(ctx, RealisationKey(r.ID), bytes.NewReader(body), int64(len(body)), "application/json"); err != nil {
			return fmt.Errorf("upload realisation %s: %w", r.ID, err)
		}
		return nil
	}
	lg := newLedger()
	lg.rely(r.OutPath)
	lg.wroteKey(RealisationKey(r.ID), u.cfg.Now())
	if err := put(); err != nil {
		return err
	}
	// A realisation relies on its output's .narinfo, and a sweep may have
	// listed an older one under its key.
	if err := u.settle(ctx, lg, func(again []string, _ map[string]bool, keys []string) error {
		if len(again) > 0 {
			return fmt.Errorf("the output %s of realisation %s vanished while a gc swept; will retry", r.OutPath, r.ID)
		}
		return put()
	}); err != nil {
		return err
	}
	u.mu.Lock()
	u.stats.Realisations++
	u.mu.Unlock()
	u.cfg.Log.Info().Str("realisation", r.ID).Str("path", r.OutPath).Msg("uploaded realisation")
	return nil
}
