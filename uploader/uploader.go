package uploader

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/rs/zerolog"

	"github.com/nixpush/nixpush/narpack"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// PathInfoSource is where the uploader learns what the Nix database knows.
type PathInfoSource interface {
	Query(ctx context.Context, paths []string) ([]nix.PathInfo, error)
	QueryClosure(ctx context.Context, paths []string) ([]nix.PathInfo, error)
}

// Config configures an Uploader.
type Config struct {
	Store store.Store
	Nix   PathInfoSource
	Key   signature.SecretKey
	// Keys are further signing keys (during a key rotation): each .narinfo
	// carries a signature by Key and one by each of Keys.
	Keys        []signature.SecretKey
	Compression narpack.Compression
	Jobs        int    // paths packed and uploaded at once; <1 means 4
	StoreDir    string // "" means nix.DefaultStoreDir
	Log         zerolog.Logger
	// Priority is written to nix-cache-info when the cache lacks one (0 = 40).
	Priority int
	// Filter leaves paths out of every push.
	Filter Filter
	// WriteNARListing writes <hash>.ls, the NAR's file listing, before
	// each .narinfo, as Nix does with write-nar-listing=true.
	WriteNARListing bool
	// TrustCacheFor is how long a path found in the cache (or written to
	// it) is believed to stay there: within it the path is not checked
	// again; after it, the next push that needs it checks, and uploads it
	// again if it is gone. 0 checks every path of every closure pushed.
	TrustCacheFor time.Duration
	// Host names this machine in the root records (default: os.Hostname).
	Host string
	// MaxSweepWait bounds how long a push waits for a gc sweep to finish
	// (0 = 1h); past it the push fails, to be retried (as a full re-check).
	MaxSweepWait time.Duration
	// PollSweep is how often a push waiting for a sweep reads gc's marker
	// again (0 = 2s).
	PollSweep time.Duration
	// ClockSkew is how far the clocks of gc, the store and this machine
	// may disagree (0 = DefaultClockSkew).
	ClockSkew time.Duration
	// Now is the clock (nil: time.Now); tests move it.
	Now func() time.Time
	// Sleep waits d or until ctx is done (nil: a timer); tests replace it.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Uploader pushes closures to one store. It is safe for concurrent use: a
// path wanted by several pushes at once is uploaded once.
type Uploader struct {
	counted *store.Counting // cfg.Store, counting the requests of Stats
	cfg     Config
	jobs    chan struct{} // a token per pack-and-upload
	big     chan struct{} // a token per large NAR streaming (each holds ~12 MiB of buffers)
	stat    chan struct{} // a token per existence check

	infoMu   sync.Mutex
	infoSeen time.Time // when nix-cache-info was last found or written

	// markerSeen: gc's marker was there at some read. gc never removes it
	// (an older gc did, and so may a hand), so after that its absence says
	// nothing about sweeps.
	markerSeen atomic.Bool
	markerGone atomic.Bool // said so in the log
	// problem is how the settings do not fit the last sweep's ("": they
	// do); nil until a sweep said its settings.
	problem atomic.Pointer[string]

	mu       sync.Mutex
	seen     map[string]time.Time // when each path's .narinfo was last found in the store or written (filtered paths: their references ensured)
	planned  map[string]bool      // paths counted in Stats.Planned and not yet uploaded
	skipped  map[string]bool      // paths the filter left out (it never changes)
	inflight map[string]*flight
	nars     map[string]*narFlight // NAR uploads under way or done, until their .narinfo is written
	stats    Stats
	journal  Journal        // where resumable uploads are recorded (nil: none)
	resuming map[string]int // resumable uploads under way, by path
}

// errCached is nar's answer for a path whose .narinfo is already written.
var errCached = errors.New("already in the cache")

// errInFlight tells a prefetch that another push is uploading the NAR.
var errInFlight = errors.New("NAR upload in flight")

// narFlight is one NAR upload, shared by every push that needs the path.
type narFlight struct {
	done chan struct{}
	p    packed
	err  error
}

type flight struct {
	done chan struct{}
	err  error
}

// Stats are cumulative figures since the uploader started.
type Stats struct {
	Paths        int64     // paths uploaded
	NarBytes     int64     // their NAR bytes
	FileBytes    int64     // their compressed bytes
	Skipped      int64     // paths found already in the cache
	Requests     int64     // operations on the store (existence checks, uploads, reads)
	Logs         int64     // build logs uploaded
	Filtered     int64     // paths left out by the filter
	Realisations int64     // realisations of content-addressed derivations uploaded
	LastPush     time.Time // when a path was last uploaded
	// Planned are the paths pushes found missing from the cache, to be
	// uploaded (each counted once), and PlannedNarBytes their NAR bytes:
	// with Paths and NarBytes, what a push has done of what it has to do.
	Planned         int64
	PlannedNarBytes int64
	// Resumed counts uploads resumed after a restart, ResumedBytes the
	// compressed bytes they found in the store and did not send again,
	// and StartedOver the recorded uploads that could not be resumed.
	Resumed, ResumedBytes, StartedOver int64
}

// New returns an Uploader.
func New(cfg Config) *Uploader {
	if cfg.Jobs < 1 {
		cfg.Jobs = 4
	}
	if cfg.Compression == "" {
		cfg.Compression = narpack.Zstd
	}
	if cfg.StoreDir == "" {
		cfg.StoreDir = nix.DefaultStoreDir
	}
	if cfg.Priority == 0 {
		cfg.Priority = 40
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxSweepWait <= 0 {
		cfg.MaxSweepWait = time.Hour
	}
	if cfg.PollSweep <= 0 {
		cfg.PollSweep = 2 * time.Second
	}
	if cfg.ClockSkew <= 0 {
		cfg.ClockSkew = DefaultClockSkew
	}
	if cfg.Sleep == nil {
		cfg.Sleep = store.Sleep
	}
	if cfg.Host == "" {
		cfg.Host, _ = os.Hostname()
	}
	return &Uploader{
		cfg:      cfg,
		counted:  store.Count(cfg.Store),
		jobs:     make(chan struct{}, cfg.Jobs),
		big:      make(chan struct{}, narpack.BigStreams),
		stat:     make(chan struct{}, 4*cfg.Jobs),
		seen:     make(map[string]time.Time),
		planned:  make(map[string]bool),
		skipped:  make(map[string]bool),
		inflight: make(map[string]*flight),
		nars:     make(map[string]*narFlight),
		resuming: make(map[string]int),
	}
}

// Stats returns cumulative figures.
func (u *Uploader) Stats() Stats {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.stats
	s.Requests = u.counted.Requests()
	return s
}

// fresh reports whether p's .narinfo was seen in the store since cutoff.
// The caller holds u.mu.
func (u *Uploader) fresh(p string, cutoff time.Time) bool {
	t, ok := u.seen[p]
	return ok && !t.Before(cutoff)
}

// sawAt records that p's .narinfo was in the store at t. The caller holds
// u.mu.
func (u *Uploader) sawAt(p string, t time.Time) {
	if t.After(u.seen[p]) {
		u.seen[p] = t
	}
}

// goneAt records that p's .narinfo was not in the store at t: unless
// it was seen there (written, say) after t, it is no longer trusted. The
// caller holds u.mu.
func (u *Uploader) goneAt(p string, t time.Time) {
	if u.seen[p].Before(t) {
		delete(u.seen, p)
	}
}

// ForgetCache drops what the uploader knows the cache holds: after the
// store failed (a bucket deleted and made anew), it probes again.
func (u *Uploader) ForgetCache() {
	u.mu.Lock()
	clear(u.seen)
	u.mu.Unlock()
	u.infoMu.Lock()
	u.infoSeen = time.Time{}
	u.infoMu.Unlock()
}

// Store is the store the uploader pushes to.
func (u *Uploader) Store() store.Store { return u.cfg.Store }

// Traffic is what the requests to the store look like now (throttling,
// concurrency, upload rate and cap); false for a store that does not say
// (file://).
func (u *Uploader) Traffic() (store.Traffic, bool) {
	s, ok := store.As[store.TrafficReporter](u.cfg.Store)
	if !ok {
		return store.Traffic{}, false
	}
	return s.Traffic(), true
}
