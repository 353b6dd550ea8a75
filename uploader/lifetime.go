package uploader

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// The objects nixpush keeps beside the cache, under a prefix Nix never
// reads: the daemon's side of the layout, which the retention package
// reads and extends (pins, gc's probes).
const (
	// RootPrefix + <hash part>: a RootRecord, rewritten at every push of
	// a path handed to the daemon once its .narinfo is in the cache; or,
	// for a push of several roots, RootBatchPrefix + <time>-<random>: one
	// RootBatch naming them all (never rewritten; gc deletes it once it
	// has expired).
	RootPrefix      = "nixpush/roots/"
	RootBatchPrefix = RootPrefix + "batch-"
	// SweepKey is gc's marker: a SweepMarker, up from before its listing,
	// and left up, finished, after its last deletion.
	SweepKey = "nixpush/gc/sweep"
	// DefaultClockSkew is added to a sweep's deadline and finish for
	// clocks that disagree (Config.ClockSkew).
	DefaultClockSkew = 30 * time.Second
)

// RootRecord is the body of a root's object: the last push of a path
// handed to a daemon.
type RootRecord struct {
	Path     string    `json:"path"`
	PushedAt time.Time `json:"pushed_at"`
	Host     string    `json:"host,omitempty"`
}

// RootBatch is the body of a record of several roots pushed together.
type RootBatch struct {
	Paths    []string  `json:"paths"`
	PushedAt time.Time `json:"pushed_at"`
	Host     string    `json:"host,omitempty"`
}

// SweepMarker is the body of gc's marker: it may delete from ListedAt
// until Deadline, never after; once it has made its last deletion it says
// so in FinishedAt and leaves the marker up. A daemon that wrote a
// .narinfo relying on what it saw before FinishedAt (or while the sweep
// runs, after the deadline) re-checks the references; one that finds no
// marker, or a sweep that finished before its sightings, need not (see
// the package doc).
type SweepMarker struct {
	ListedAt   time.Time `json:"listed_at"`
	Deadline   time.Time `json:"deadline"`
	Host       string    `json:"host,omitempty"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	// Kind is "gc" or "repair" (verify --repair): what swept.
	Kind string `json:"kind,omitempty"`
	// The sweep's settings, for daemons to check theirs against (see
	// SweepSettings): gc's --grace, --older-than and --sweep-window, in
	// seconds; 0 when the writer did not say (an older gc, or repair,
	// which keeps no grace).
	GraceSeconds     int64 `json:"grace_s,omitempty"`
	OlderThanSeconds int64 `json:"older_than_s,omitempty"`
	WindowSeconds    int64 `json:"window_s,omitempty"`
}

// RootKey is the object that records pushes of the root p.
func RootKey(p string) string {
	return RootPrefix + strings.TrimSuffix(nix.NarInfoKey(p), ".narinfo")
}

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
		key, rec = RootKey(roots[idx[0]]), RootRecord{Path: roots[idx[0]], PushedAt: now, Host: u.cfg.Host}
	} else {
		b := RootBatch{PushedAt: now, Host: u.cfg.Host}
		for _, i := range idx {
			b.Paths = append(b.Paths, roots[i])
		}
		var r [6]byte
		rand.Read(r[:])
		key, rec = fmt.Sprintf("%s%s-%s", RootBatchPrefix, now.Format("20060102T150405.000000000Z"), hex.EncodeToString(r[:])), b
	}
	body, err := json.Marshal(rec)
	if err == nil {
		body = append(body, '\n')
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
