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
	// sweepSkew is added to a sweep's deadline for clocks that disagree.
	sweepSkew = 30 * time.Second
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
func (u *Uploader) recordRoots(ctx context.Context, roots []string, errs []error) {
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
		u.count(1)
		err = u.cfg.Store.Put(ctx, key, bytes.NewReader(body), int64(len(body)), "application/json")
	}
	if err != nil {
		for _, i := range idx {
			errs[i] = fmt.Errorf("record root %s in %s: %w", roots[i], key, err)
		}
	}
}

// waitForSweep reads gc's marker and, while a sweep may still delete,
// waits until its deadline (plus the skew margin) has passed: after that,
// that gc deletes nothing more, and whatever it deleted shows. It returns
// the marker read, or nil when the store has none (no gc has ever begun a
// sweep of it: gc leaves its marker up). A marker gone after this
// uploader saw one (removed by an older gc, or by hand) is returned as an
// unfinished sweep whose deadline has passed: a re-check, then.
func (u *Uploader) waitForSweep(ctx context.Context) (*SweepMarker, error) {
	u.count(1)
	b, err := u.cfg.Store.Get(ctx, SweepKey)
	if errors.Is(err, ErrNotExist) {
		if u.markerSeen.Load() {
			if !u.markerGone.Swap(true) {
				u.cfg.Log.Warn().Str("marker", SweepKey).
					Msg("gc's marker is gone (a gc older than this daemon removes it, or it was deleted by hand): checking what each push relied on until one is up again")
			}
			return &SweepMarker{Deadline: time.Unix(1, 0)}, nil
		}
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the gc marker %s: %w", SweepKey, err)
	}
	u.markerSeen.Store(true)
	u.markerGone.Store(false)
	var m SweepMarker
	if err := json.Unmarshal(b, &m); err != nil || m.Deadline.IsZero() {
		return nil, fmt.Errorf("the gc marker %s is not one (%v); a gc may be deleting: if none is, run nixpush gc, which replaces it", SweepKey, err)
	}
	if !m.FinishedAt.IsZero() {
		return &m, nil
	}
	until := m.Deadline.Add(u.skew())
	wait := until.Sub(u.cfg.Now())
	if wait <= 0 {
		return &m, nil
	}
	if wait > u.cfg.MaxSweepWait {
		return nil, fmt.Errorf("a gc from %s may delete until %s, more than %s from now; will retry", m.Host, m.Deadline.Format(time.RFC3339), u.cfg.MaxSweepWait)
	}
	u.cfg.Log.Info().Str("gc_host", m.Host).Time("deadline", m.Deadline).Dur("wait", wait).
		Msg("a gc is sweeping the cache: waiting for its deadline before checking what was relied on")
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return &m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (u *Uploader) skew() time.Duration {
	if u.cfg.sweepSkew != 0 {
		return u.cfg.sweepSkew
	}
	return sweepSkew
}

// sweptSince reports whether a gc may have deleted anything since t, by
// the marker m read after that: unless no gc has ever swept (m is nil) or
// the last one finished (plus the skew margin) before t, it may have.
func (u *Uploader) sweptSince(m *SweepMarker, t time.Time) bool {
	if m == nil {
		return false
	}
	return m.FinishedAt.IsZero() || !m.FinishedAt.Add(u.skew()).Before(t)
}

// recheckWritten checks, after any gc sweep under way has passed its
// deadline, that what the .narinfos written by pl rely on is still in the
// cache: the .narinfos of their references not uploaded by this push, and
// their own NARs. It returns the references to upload again, and the
// written paths whose NAR is gone (to upload again whatever the cache
// says of their .narinfo). See the package doc for why this is enough.
func (u *Uploader) recheckWritten(ctx context.Context, pl *plan) (again []string, force map[string]bool, err error) {
	m, err := u.waitForSweep(ctx)
	if err != nil {
		return nil, nil, err
	}
	pl.mu.Lock()
	written := make(map[string]writtenNAR, len(pl.written))
	for p, w := range pl.written {
		written[p] = w
	}
	pl.mu.Unlock()
	// since is the oldest sighting this push relies on: of the
	// references it did not upload, and of its NARs (when their upload
	// began). Nothing a gc finished deleting before it can be missing.
	relied := make(map[string]bool)
	var since time.Time
	older := func(t time.Time) {
		if since.IsZero() || t.Before(since) {
			since = t
		}
	}
	u.mu.Lock()
	for p, w := range written {
		older(w.at)
		for _, r := range pl.infos[p].References {
			// A filtered reference is never in this cache (consumers
			// take it from upstream): nothing here relies on it.
			if _, ok := written[r]; !ok && r != p && !u.skipped[r] {
				relied[r] = true
				older(u.seen[r]) // zero, if another push found it gone since
			}
		}
	}
	u.mu.Unlock()
	if !u.sweptSince(m, since) {
		return nil, nil, nil
	}
	var narinfos, nars []string
	for r := range relied {
		narinfos = append(narinfos, nix.NarInfoKey(r))
	}
	for _, w := range written {
		nars = append(nars, w.key)
	}
	at := u.cfg.Now()
	gone, failed := u.absent(ctx, narinfos, nars)
	for _, err := range failed {
		return nil, nil, fmt.Errorf("check what the written .narinfos rely on: %w", err)
	}
	force = make(map[string]bool)
	u.mu.Lock()
	defer u.mu.Unlock()
	for r := range relied {
		if gone[nix.NarInfoKey(r)] {
			u.goneAt(r, at)
			again = append(again, r)
		} else {
			u.sawAt(r, at)
		}
	}
	for p, w := range written {
		if gone[w.key] {
			delete(u.seen, p)
			force[p] = true
			again = append(again, p)
		}
	}
	return again, force, nil
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
	b, ok := u.cfg.Store.(Bucket)
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
	budget, seen := len(keys)*listBudget, int64(0)
	errBudget := errors.New("over budget")
	err := b.List(ctx, dir, func(o Object) error {
		seen++
		names[o.Key] = true
		if budget--; budget <= 0 {
			return errBudget
		}
		return nil
	})
	u.count(seen/1000 + 1) // list requests
	if err != nil {
		return nil, false // too large or failing: check key by key
	}
	return names, true
}
