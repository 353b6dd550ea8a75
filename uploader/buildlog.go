package uploader

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"time"

	"github.com/nixpush/nixpush/layout"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/nixpush/nixpush/narpack"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

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
	n, err := io.Copy(buf, io.LimitReader(r, narpack.SmallNAR+1))
	if err != nil {
		// A local log that cannot be read (a corrupt .bz2) reads no
		// better on the next attempt.
		return store.Permanent(fmt.Errorf("read build log of %s: %w", drvPath, err))
	}
	var body io.Reader = bytes.NewReader(buf.Bytes())
	size := n
	if n > narpack.SmallNAR {
		body, size = io.MultiReader(body, r), -1
	}
	at := u.cfg.Now()
	if err := u.counted.Put(ctx, layout.LogKey(drvPath), body, size, "text/plain; charset=utf-8"); err != nil {
		return fmt.Errorf("upload build log of %s: %w", drvPath, err)
	}
	// A sweep may have listed an older log under this key, to delete it.
	lg := newLedger()
	lg.wroteKey(layout.LogKey(drvPath), at)
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

// PutRealisation uploads r, with the uploader's signatures added, to
// realisations/<id>.doi (Nix 2.8 to 2.34) and to
// build-trace-v2/<drv>/<output>.doi (Nix 2.35 and later), each as far as
// r says enough for it: one read from Nix 2.35 has no id, one from older
// Nix names its derivation only when the caller said which it asked. The
// caller has made sure r's output path is in the cache.
func (u *Uploader) PutRealisation(ctx context.Context, r nix.Realisation) error {
	keys := append([]signature.SecretKey{u.cfg.Key}, u.cfg.Keys...)
	type object struct {
		key, what string
		body      []byte
	}
	var objs []object
	if r.ID != "" {
		body, err := r.Signed(keys...)
		if err != nil {
			return err
		}
		objs = append(objs, object{layout.RealisationKey(r.ID), "realisation " + r.ID, body})
	}
	if r.HasTrace() {
		body, err := r.TraceSigned(keys...)
		if err != nil {
			return store.Permanent(err)
		}
		objs = append(objs, object{layout.BuildTraceKey(r.DrvPath, r.Output), "build trace " + r.TraceKey(), body})
	}
	if len(objs) == 0 {
		return store.Permanent(fmt.Errorf("realisation of %s: %w: neither an id nor a derivation and output to key it by", r.OutPath, nix.ErrRealisationFormat))
	}
	put := func(only map[string]bool) error {
		for _, o := range objs {
			if only != nil && !only[o.key] {
				continue
			}
			if err := u.counted.Put(ctx, o.key, bytes.NewReader(o.body), int64(len(o.body)), "application/json"); err != nil {
				return fmt.Errorf("upload %s: %w", o.what, err)
			}
		}
		return nil
	}
	lg := newLedger()
	lg.rely(r.OutPath)
	at := u.cfg.Now()
	for _, o := range objs {
		lg.wroteKey(o.key, at)
	}
	if err := put(nil); err != nil {
		return err
	}
	// Each object relies on its output's .narinfo, and a sweep may have
	// listed an older one under its key.
	if err := u.settle(ctx, lg, func(again []string, _ map[string]bool, vanished []string) error {
		if len(again) > 0 {
			return fmt.Errorf("the output %s of %s vanished while a gc swept; will retry", r.OutPath, objs[0].what)
		}
		only := make(map[string]bool, len(vanished))
		at := u.cfg.Now()
		for _, k := range vanished {
			only[k] = true
			lg.wroteKey(k, at)
		}
		return put(only)
	}); err != nil {
		return err
	}
	u.mu.Lock()
	u.stats.Realisations++
	u.mu.Unlock()
	ev := u.cfg.Log.Info().Str("path", r.OutPath)
	if r.ID != "" {
		ev = ev.Str("realisation", r.ID)
	}
	if r.HasTrace() {
		ev = ev.Str("build_trace", r.TraceKey())
	}
	ev.Msg("uploaded realisation")
	return nil
}
