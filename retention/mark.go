package retention

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// liveSet is gc's mark: the nodes whose .narinfo stays, closed under
// references, and why (the counts of GCReport.Kept).
type liveSet struct {
	g     *Graph
	live  []bool // by node
	stack []int32
	// pinned, rooted and inGrace count the pins, the roots pushed within
	// --older-than and the .narinfos written within --grace that were
	// marked; late the pins and root records found by listing again.
	pinned, rooted, inGrace, late int
	// lateRecords are the root records written since the walk: not
	// deleted, whatever their pushed_at says.
	lateRecords map[string]bool
}

// markLive marks the closure of every pin, of every root pushed within
// olderThan, of every .narinfo written within grace of now or unreadable,
// and of the output of every realisation written within grace.
func markLive(g *Graph, now time.Time, olderThan, grace time.Duration) *liveSet {
	s := &liveSet{g: g, live: make([]bool, g.nodeCount()), lateRecords: make(map[string]bool)}
	for _, p := range g.Pins {
		if i, ok := g.lookup(nix.StoreHashPart(p.Path)); ok {
			s.pinned++
			s.mark(i)
		}
	}
	for i, at := range g.roots {
		if now.Sub(at) < olderThan {
			s.rooted++
			s.mark(i)
		}
	}
	for i := range int32(g.nodeCount()) {
		n := g.node(i)
		if n.present && (now.Sub(time.Unix(0, n.mod)) < grace || n.unreadable) {
			// An unreadable .narinfo is kept (verify reports it), and
			// with it the references it names, read past the line that
			// would not parse: a kept path's references never go.
			if !n.unreadable {
				s.inGrace++
			}
			s.mark(i)
		}
	}
	// A realisation written within --grace may be a push in progress too
	// (it goes up after its output's push): its output stays.
	for _, r := range g.realisations {
		if r.out >= 0 && g.node(r.out).present && now.Sub(time.Unix(0, r.mod)) < grace {
			s.mark(r.out)
		}
	}
	s.closure()
	return s
}

// mark marks node i live, its references still to mark.
func (s *liveSet) mark(i int32) {
	if !s.live[i] {
		s.live[i] = true
		s.stack = append(s.stack, i)
	}
}

// closure marks the references of what was marked, to the end.
func (s *liveSet) closure() {
	for len(s.stack) > 0 {
		i := s.stack[len(s.stack)-1]
		s.stack = s.stack[:len(s.stack)-1]
		for _, r := range s.g.refsOf(i) {
			s.mark(r)
		}
	}
}

// addLate marks the closures of the paths of pins and root records
// written since the walk (their .narinfos that the walk saw).
func (s *liveSet) addLate(late []late) {
	for _, l := range late {
		s.late++
		if l.record {
			s.lateRecords[l.key] = true
		}
		for _, h := range l.hashes {
			if i, ok := s.g.lookup(h); ok && s.g.node(i).present {
				s.mark(i)
			}
		}
	}
	s.closure()
}

// markGC is gc's mark phase after the walk: the live set, the pending
// uploads, and, unless a dry run, the pins and root records written since
// the walk listed them (seen: key → ETag), found by listing them again
// just before the plan and the first deletion.
func markGC(ctx context.Context, b store.Bucket, g *Graph, seen map[string]string, now time.Time, opts GCOptions) (*liveSet, pendingUploads, error) {
	live := markLive(g, now, opts.OlderThan, opts.Grace)
	pending, err := listPending(ctx, b)
	if err != nil {
		return nil, pending, err
	}
	// Pins and root records written since the walk listed them (a pin
	// taken, a path already cached pushed again) keep their closures
	// too: list them again now, just before the first deletion, and read
	// those that are new or changed.
	if !opts.DryRun {
		late, err := listLate(ctx, b, seen)
		if err != nil {
			return nil, pending, err
		}
		live.addLate(late)
	}
	return live, pending, nil
}

// pendingUploads are the multipart uploads under way and the markers of
// resumable uploads (nixpush/uploads/), by key: when last written.
type pendingUploads struct {
	uploads []store.PendingUpload
	markers map[string]time.Time
}

// listPending lists the upload markers, then the pending uploads.
func listPending(ctx context.Context, b store.Bucket) (pendingUploads, error) {
	p := pendingUploads{markers: make(map[string]time.Time)}
	if err := b.List(ctx, layout.UploadMarkerPrefix, func(o store.Object) error {
		p.markers[o.Key] = o.LastModified
		return nil
	}); err != nil {
		return p, err
	}
	err := b.ListUploads(ctx, func(u store.PendingUpload) error {
		p.uploads = append(p.uploads, u)
		return nil
	})
	return p, err
}

// late is a pin or root record written or rewritten after the walk
// listed the bucket: the hash parts of the paths it keeps.
type late struct {
	key    string
	record bool // a root record (a pin is never deleted)
	hashes []string
}

// listLate lists the pins and root records again and reads those whose
// ETag the walk did not list (seen: key → ETag).
func listLate(ctx context.Context, b store.Bucket, seen map[string]string) ([]late, error) {
	var keys []string
	for _, prefix := range []string{layout.PinPrefix, layout.RootPrefix} {
		if err := b.List(ctx, prefix, func(o store.Object) error {
			if etag, ok := seen[o.Key]; !ok || etag != o.ETag {
				keys = append(keys, o.Key)
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("list %s again before deleting: %w", prefix, err)
		}
	}
	var out []late
	for _, key := range keys {
		data, _, err := b.GetTagged(ctx, key)
		if errors.Is(err, store.ErrNotExist) {
			continue // removed again
		}
		if err != nil {
			return nil, fmt.Errorf("read %s, written since the walk: %w", key, err)
		}
		l := late{key: key, record: strings.HasPrefix(key, layout.RootPrefix)}
		switch {
		case strings.HasPrefix(key, layout.PinPrefix):
			p, err := layout.ParsePin(strings.TrimPrefix(key, layout.PinPrefix), data, time.Time{})
			if err != nil {
				return nil, err
			}
			l.hashes = []string{nix.StoreHashPart(p.Path)}
		case strings.HasPrefix(key, layout.RootBatchPrefix):
			r, _ := layout.ParseRootBatch(data, time.Time{})
			for _, p := range r.Paths {
				if h := nix.StoreHashPart(p); h != "" {
					l.hashes = append(l.hashes, h)
				}
			}
		default:
			// Written during this sweep, the path was pushed now, whatever
			// the record's pushed_at says; one unreadable keeps its key's
			// path all the same.
			if h := strings.TrimPrefix(key, layout.RootPrefix); len(h) == 32 {
				l.hashes = []string{h}
			}
		}
		out = append(out, l)
	}
	return out, nil
}

// recording is a Bucket whose listings remember the ETag of each pin and
// root record listed.
type recording struct {
	store.Bucket
	mu   sync.Mutex
	seen map[string]string
}

func (r *recording) List(ctx context.Context, prefix string, fn func(store.Object) error) error {
	return r.Bucket.List(ctx, prefix, r.remember(fn))
}

// ListUnordered lists as List does, in the order the recorded store
// lists cheapest.
func (r *recording) ListUnordered(ctx context.Context, prefix string, fn func(store.Object) error) error {
	return store.ListAnyOrder(ctx, r.Bucket, prefix, r.remember(fn))
}

func (r *recording) remember(fn func(store.Object) error) func(store.Object) error {
	return func(o store.Object) error {
		if strings.HasPrefix(o.Key, layout.PinPrefix) || strings.HasPrefix(o.Key, layout.RootPrefix) {
			r.mu.Lock()
			r.seen[o.Key] = o.ETag
			r.mu.Unlock()
		}
		return fn(o)
	}
}
