package uploader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nixpush/nixpush/layout"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"golang.org/x/sync/errgroup"

	"github.com/nixpush/nixpush/narpack"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// ensureCacheInfo writes nix-cache-info when the cache lacks it, before any
// other object, since Nix 2.8 clients cache it forever. It checks unless
// it has seen the file since cutoff.
func (u *Uploader) ensureCacheInfo(ctx context.Context, cutoff time.Time) error {
	u.infoMu.Lock()
	defer u.infoMu.Unlock()
	if !u.infoSeen.IsZero() && !u.infoSeen.Before(cutoff) {
		return nil
	}
	at := u.cfg.Now()
	has, err := u.counted.Has(ctx, "nix-cache-info")
	if err == nil && !has {
		text := nix.CacheInfo(u.cfg.StoreDir, u.cfg.Priority)
		err = u.counted.Put(ctx, "nix-cache-info", strings.NewReader(text), int64(len(text)), "text/x-nix-cache-info")
	}
	if err != nil {
		return fmt.Errorf("nix-cache-info: %w", err)
	}
	u.infoSeen = at
	return nil
}

// ensure makes sure the cache holds p's .narinfo, written after those of
// its references: once per path however many pushes want it at once.
func (u *Uploader) ensure(ctx context.Context, p string, pl *plan) error {
	for tries := 0; ; tries++ {
		u.mu.Lock()
		if u.fresh(p, pl.since(p)) {
			u.mu.Unlock()
			return nil
		}
		f := u.inflight[p]
		if f == nil {
			break // still locked
		}
		u.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		// That push may have trusted an older sighting than this one
		// does: then this one checks for itself.
		if f.err != nil || tries == 2 {
			return f.err
		}
	}
	f := &flight{done: make(chan struct{})}
	u.inflight[p] = f
	u.mu.Unlock()

	f.err = u.ensureOnce(ctx, p, pl)

	u.mu.Lock()
	delete(u.inflight, p)
	u.mu.Unlock()
	close(f.done)
	return f.err
}

func (u *Uploader) ensureOnce(ctx context.Context, p string, pl *plan) error {
	info, ok := pl.infos[p]
	if !ok {
		return fmt.Errorf("%s: no path info (it is in a closure pushed at the same time); will retry", p)
	}
	// A filtered path is left out, but not its references, which other
	// paths may need: they are ensured below all the same.
	if !pl.missing[p] && !pl.filtered[p] { // not probed by this push: check now
		at := u.cfg.Now()
		has, err := u.has(ctx, layout.NarInfoKey(p))
		if err != nil {
			return err
		}
		if has {
			u.mu.Lock()
			u.sawAt(p, at)
			u.stats.Skipped++
			u.mu.Unlock()
			return nil
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, ref := range info.References {
		if ref == p {
			continue
		}
		g.Go(func() error { return u.ensure(gctx, ref, pl) })
	}
	if err := g.Wait(); err != nil {
		if errors.Is(err, context.Canceled) && ctx.Err() != nil {
			return ctx.Err()
		}
		var dep *DependencyError
		if errors.As(err, &dep) {
			return err
		}
		return &DependencyError{Path: p, Err: err}
	}
	if pl.filtered[p] {
		_, why := u.cfg.Filter.Skips(info)
		u.mu.Lock()
		u.sawAt(p, u.cfg.Now())
		u.stats.Filtered++
		u.mu.Unlock()
		u.cfg.Log.Debug().Str("path", p).Str("reason", why).Msg("filtered: not uploaded")
		return nil
	}
	return u.upload(ctx, info, pl)
}

func (u *Uploader) has(ctx context.Context, key string) (bool, error) {
	select {
	case u.stat <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-u.stat }()
	return u.counted.Has(ctx, key)
}

// prefetchNARs starts the NAR uploads of order, in that order, as upload
// slots free up.
func (u *Uploader) prefetchNARs(ctx context.Context, order []string, pl *plan, wg *sync.WaitGroup) {
	for _, p := range order {
		if ctx.Err() != nil {
			return
		}
		u.mu.Lock()
		_, started := u.nars[p]
		started = started || u.fresh(p, pl.since(p))
		u.mu.Unlock()
		if started {
			continue
		}
		select {
		case u.jobs <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Go(func() {
			defer func() { <-u.jobs }()
			u.nar(ctx, pl.infos[p], pl.since(p), true)
		})
	}
}

// nar returns the NAR upload of info, starting it (and waiting for an
// upload slot, unless the caller holds one) when no push has yet. A caller
// holding a slot never waits for another's upload: that upload may be
// waiting for a slot, and with every slot so held nothing would move.
func (u *Uploader) nar(ctx context.Context, info nix.PathInfo, cutoff time.Time, holdsSlot bool) (packed, error) {
	var f *narFlight
	for tries := 0; ; tries++ {
		u.mu.Lock()
		if u.fresh(info.Path, cutoff) {
			u.mu.Unlock()
			return packed{}, errCached
		}
		f = u.nars[info.Path]
		if f == nil {
			break // still locked
		}
		u.mu.Unlock()
		if holdsSlot {
			// A prefetch: the upload is someone else's already, and that
			// one may be waiting for the very slot held here.
			return packed{}, errInFlight
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return packed{}, ctx.Err()
		}
		// Another push's upload failed, perhaps only because that push
		// was cancelled: this one tries for itself.
		if f.err == nil || tries == 2 {
			return f.p, f.err
		}
	}
	f = &narFlight{done: make(chan struct{})}
	u.nars[info.Path] = f
	u.mu.Unlock()
	if !holdsSlot {
		select {
		case u.jobs <- struct{}{}:
			defer func() { <-u.jobs }()
		case <-ctx.Done():
			f.err = ctx.Err()
		}
	}
	if f.err == nil {
		f.p, f.err = u.uploadNAR(ctx, info)
	}
	if f.err != nil {
		// A failed upload is not remembered: the next attempt starts anew.
		u.mu.Lock()
		delete(u.nars, info.Path)
		u.mu.Unlock()
	}
	close(f.done)
	return f.p, f.err
}

// uploadNAR packs and uploads the NAR of info (as a resumable upload when
// there is a Journal and the store takes multipart uploads), and signs its
// .narinfo.
func (u *Uploader) uploadNAR(ctx context.Context, info nix.PathInfo) (packed, error) {
	if info.NarSize > narpack.SmallNAR {
		select {
		case u.big <- struct{}{}:
			defer func() { <-u.big }()
		case <-ctx.Done():
			return packed{}, ctx.Err()
		}
	}
	u.counted.Add(1) // one request a NAR, whatever it takes: one PUT, a multipart upload, none when packing fails first
	at := u.cfg.Now()
	var p packed
	var err error
	key := narKey(info, u.cfg.Compression)
	if ms, ok := store.As[store.Multipart](u.cfg.Store); ok && info.NarSize > narpack.SmallNAR && u.getJournal() != nil {
		p, err = u.putResumable(ctx, ms, u.getJournal(), info, key)
	} else {
		p, err = packAndPut(ctx, u.cfg.Store, info, u.cfg.Compression, u.cfg.WriteNARListing, key)
	}
	if err != nil {
		return packed{}, fmt.Errorf("upload %s: %w", info.Path, err)
	}
	p.at = at
	// The .narinfo is signed here, beside the NAR upload, rather than when
	// its references are in: on a deep closure that is one step less on
	// the serial path from one .narinfo PUT to the next.
	if p.narinfo, err = u.narinfo(info, p); err != nil {
		return packed{}, err
	}
	return p, nil
}

// narinfo is the signed .narinfo text of info, whose NAR went up as p.
func (u *Uploader) narinfo(info nix.PathInfo, p packed) (string, error) {
	c := u.cfg.Compression
	ni, err := nix.NarInfo(info, nix.Upload{URL: narKey(info, c), Compression: string(c), FileHash: p.FileHash, FileSize: p.FileSize}, append([]signature.SecretKey{u.cfg.Key}, u.cfg.Keys...)...)
	if err != nil {
		return "", err
	}
	return ni.String(), nil
}

// upload puts the signed .narinfo once the NAR is in (uploading it now if
// no push has started it); the caller has made sure every reference's
// .narinfo is in the store.
func (u *Uploader) upload(ctx context.Context, info nix.PathInfo, pl *plan) error {
	start := time.Now()
	c := u.cfg.Compression
	p, err := u.nar(ctx, info, pl.since(info.Path), false)
	if errors.Is(err, errCached) {
		return nil
	}
	if err != nil {
		return err
	}
	if p.Listing != nil {
		// Before the .narinfo, as Nix writes it: a .narinfo never lacks its listing.
		if err := u.counted.Put(ctx, layout.ListingKey(info.Path), bytes.NewReader(p.Listing), int64(len(p.Listing)), "application/json"); err != nil {
			return fmt.Errorf("upload listing of %s: %w", info.Path, err)
		}
	}
	text := p.narinfo
	if err := u.counted.Put(ctx, layout.NarInfoKey(info.Path), strings.NewReader(text), int64(len(text)), "text/x-nix-narinfo"); err != nil {
		return fmt.Errorf("upload %s: %w", info.Path, err)
	}
	d := time.Since(start)
	w := writtenNAR{key: narKey(info, c), at: p.at, listing: p.Listing != nil}
	pl.mu.Lock()
	pl.written[info.Path] = w
	pl.mu.Unlock()
	pl.lg.wrote(info, w)
	u.mu.Lock()
	delete(u.nars, info.Path)
	delete(u.planned, info.Path)
	u.sawAt(info.Path, u.cfg.Now()) // in the same step, so no push starts this NAR again
	u.stats.Paths++
	u.stats.NarBytes += int64(p.NarSize)
	u.stats.FileBytes += int64(p.FileSize)
	u.stats.LastPush = time.Now()
	u.mu.Unlock()
	u.cfg.Log.Info().Str("path", info.Path).Uint64("nar_bytes", p.NarSize).Uint64("file_bytes", p.FileSize).
		Int64("duration_ms", d.Milliseconds()).Msg("uploaded")
	return nil
}
