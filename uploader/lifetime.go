package uploader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/store"
)

// DefaultClockSkew is added to a sweep's deadline and finish for clocks
// that disagree (Config.ClockSkew).
const DefaultClockSkew = 30 * time.Second

// recordRoots records the roots pushed without error: one record of its
// own for a lone root, one batch record for several (a push cycle of the
// daemon gathers the builds of a moment: one request, not one per build).
// A root whose record cannot be written fails, to be pushed again.
func (u *Uploader) recordRoots(ctx context.Context, roots []string, errs []error, lg *ledger) {
	var idx []int
	for i, r := range roots {
		if errs[i] == nil && len(path.Base(r)) >= 33 {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return
	}
	now := u.cfg.Now().UTC()
	var key string
	var rec any
	if len(idx) == 1 {
		key, rec = layout.RootKey(roots[idx[0]]), layout.Root{Path: roots[idx[0]], PushedAt: now, Host: u.cfg.Host}
	} else {
		b := layout.RootBatch{PushedAt: now, Host: u.cfg.Host}
		for _, i := range idx {
			b.Paths = append(b.Paths, roots[i])
		}
		key, rec = layout.NewRootBatchKey(now), b
	}
	body, err := layout.Marshal(rec)
	if err == nil {
		err = u.counted.Put(ctx, key, bytes.NewReader(body), int64(len(body)), "application/json")
	}
	if err == nil && len(idx) == 1 {
		// Rewritten in place: a sweep may have listed the record before.
		lg.wroteKey(key, now)
	}
	if err != nil {
		for _, i := range idx {
			errs[i] = fmt.Errorf("record root %s in %s: %w", roots[i], key, err)
		}
	}
}

// absent returns which of the given objects the store lacks (gone): the
// top-level ones (.narinfos), and the deep ones (NARs) when they share a
// directory, with one listing each when that is cheaper, the rest with
// existence checks in parallel; and the objects whose check failed, with
// its error (neither gone nor known to be there).
func (u *Uploader) absent(ctx context.Context, top, deep []string) (gone map[string]bool, failed map[string]error) {
	gone, failed = make(map[string]bool), make(map[string]error)
	if listed, ok := u.listNarInfos(ctx, len(top)); ok {
		for _, k := range top {
			if !listed[k] {
				gone[k] = true
			}
		}
		top = nil
	}
	if listed, ok := u.listDir(ctx, deep); ok {
		for _, k := range deep {
			if !listed[k] {
				gone[k] = true
			}
		}
		deep = nil
	}
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(4 * u.cfg.Jobs)
	for _, k := range append(top, deep...) {
		g.Go(func() error {
			has, err := u.has(ctx, k)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed[k] = err
			} else if !has {
				gone[k] = true
			}
			return nil
		})
	}
	g.Wait()
	return gone, failed
}

// listDir lists the directory that every one of keys is in (nar/, for the
// NARs a push wrote) when that is cheaper than checking them one by one,
// on the budget listNarInfos keeps: on a 500-path push, one listing
// instead of 500 existence checks.
func (u *Uploader) listDir(ctx context.Context, keys []string) (map[string]bool, bool) {
	b, ok := store.As[store.Bucket](u.counted)
	if !ok || len(keys) < 32 {
		return nil, false
	}
	i := strings.LastIndexByte(keys[0], '/')
	if i < 0 {
		return nil, false
	}
	dir := keys[0][:i+1]
	for _, k := range keys {
		if !strings.HasPrefix(k, dir) || strings.Contains(k[len(dir):], "/") {
			return nil, false
		}
	}
	names := make(map[string]bool)
	budget := len(keys) * listBudget
	errBudget := errors.New("over budget")
	err := b.List(ctx, dir, func(o store.Object) error {
		names[o.Key] = true
		if budget--; budget <= 0 {
			return errBudget
		}
		return nil
	})
	if err != nil {
		return nil, false // too large or failing: check key by key
	}
	return names, true
}
