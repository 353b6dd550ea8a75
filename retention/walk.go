package retention

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"golang.org/x/sync/errgroup"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// WalkOptions say how to walk a cache.
type WalkOptions struct {
	// Cache remembers what was read, by ETag; nil reads everything.
	Cache *Cache
	// Jobs is how many objects are read at once; <1 means 32.
	Jobs int
	// Keys, when set, are checked against each .narinfo's signatures.
	Keys []signature.PublicKey
	// NarHashes keeps each .narinfo's NarHash, to check NARs against.
	NarHashes bool
	// Progress, when set, is called now and then with the figures so far.
	Progress func(WalkStats)
}

// WalkStats are a walk's figures.
type WalkStats struct {
	Objects   int64 `json:"objects"`    // listed
	NarInfos  int64 `json:"narinfos"`   // .narinfo objects listed
	Read      int64 `json:"read"`       // small objects read from the store
	CacheHits int64 `json:"cache_hits"` // small objects found in the cache instead
	Requests  int64 `json:"requests"`   // requests to the store (a listing page counts one)
}

// Graph is what a walk learnt of a cache, kept compact: per .narinfo its
// references as small integers, its NAR's key and sizes; per NAR object its
// size and age; the roots and pins. It grows with the number of paths,
// not with the bytes of the listing or of the .narinfos.
type Graph struct {
	StoreDir  string        // of the first .narinfo read; /nix/store when none
	CacheInfo bool          // nix-cache-info is there
	Sweep     *layout.Sweep // a gc marker found in the listing
	Pins      []layout.Pin
	Stats     WalkStats

	// The compact storage of graph.go: nodes by hash part (slots), their
	// names and NAR keys in arena, their references in refChunks.
	nodes     chunked[node]
	slots     []int32 // open addressing: node+1, 0 when free
	inSlots   int
	oddIndex  map[string]int32 // hash parts that are not nixbase32
	oddHash   map[int32]string
	oddDrv    map[int32]string // Derivers that are not <nixbase32>-<name>.drv
	arena     [][]byte
	refChunks [][]int32
	narList   chunked[narObject]
	narSlots  []int32             // open addressing: NAR+1, 0 when free
	comps     []string            // compressions, by node.comp
	bad       map[int32]string    // why a .narinfo could not be read
	full      map[int32]narCheck  // what verify --full checks (WalkOptions.NarHashes)
	roots     map[int32]time.Time // last push of each root
	// listings are the <hash>.ls NAR listings: their node, when written.
	listings []listing
	// rootRecords are the hash parts of root records, by node.
	rootRecords map[int32]bool
	// rootBatches are the batch root records, by key: when pushed.
	rootBatches map[string]time.Time
	unreadable  []string // .narinfo keys that could not be read
	// logs are the build logs (log/<drv>), realisations the
	// realisations/<id>.doi and build-trace-v2 objects.
	logs         []logObject
	realisations []realisation
}

// narCheck is what verify --full checks a NAR against: the .narinfo's
// NarHash and NarSize.
type narCheck struct {
	hash string
	size uint64
}

// listing is a <hash>.ls NAR listing.
type listing struct {
	node int32
	mod  int64 // LastModified, Unix nanoseconds
}

// logObject is a build log, log/<derivation file name>.
type logObject struct {
	key str   // in the arena
	mod int64 // LastModified, Unix nanoseconds
}

// drv is the file name of the derivation the log is of.
func (g *Graph) logDrv(l logObject) string { return strings.TrimPrefix(g.str(l.key), layout.LogPrefix) }

// realisation is a realisations/<id>.doi or build-trace-v2/<drv>/<output>.doi object.
type realisation struct {
	key str   // in the arena
	mod int64 // LastModified, Unix nanoseconds
	out int32 // node of its outPath; -1 when it cannot be read
}

type node struct {
	hash       [20]byte // the hash part, nixbase32-decoded (unless odd)
	deriver    [20]byte // the Deriver's hash part, decoded (when hasDrv)
	name       str      // store path name, after "<hash>-"; empty when no .narinfo says
	refs       span
	fileSize   uint64
	mod        int64 // LastModified, Unix nanoseconds
	nar        int32 // in narList; -1 when no .narinfo names one
	comp       uint8 // in comps
	present    bool  // the .narinfo is in the cache
	sigOK      bool  // a given key verifies it (when keys were given)
	unreadable bool  // the .narinfo could not be read: see Graph.bad
	odd        bool  // the hash part is not nixbase32: see Graph.oddHash
	hasDrv     bool  // it names a Deriver: deriver, or Graph.oddDrv
}

// narObject is a NAR key, named by a .narinfo or listed (or both).
type narObject struct {
	digest [32]byte // of its key, when ext says it has the usual form
	key    str      // when it has not
	size   int64
	mod    int64 // LastModified, Unix nanoseconds
	ext    uint8 // in layout.NarExts, plus one; 0: the key is in the arena
	listed bool  // the object is in the store
}

// url is the key of node i's NAR.
func (g *Graph) url(i int32) string { return g.narKey(g.node(i).nar) }

// compression is node i's Compression.
func (g *Graph) compression(i int32) string { return g.comps[g.node(i).comp] }

// Path is the store path of node i.
func (g *Graph) path(i int32) string {
	n := g.node(i)
	if n.name.n == 0 {
		return g.StoreDir + "/" + g.hashOf(i) + "-?"
	}
	return g.StoreDir + "/" + g.hashOf(i) + "-" + g.str(n.name)
}

// NarInfoCount is the number of .narinfos in the cache.
func (g *Graph) NarInfoCount() int {
	n := 0
	for i := range g.nodeCount() {
		if g.node(int32(i)).present {
			n++
		}
	}
	return n
}

// Walk lists the whole store once, streaming, and reads each .narinfo,
// root and pin it has not read at the same ETag before. Each listed
// object goes to the handler of its kind (walkKinds, in walkkinds.go, by layout.Classify).
func Walk(ctx context.Context, b store.Bucket, opts WalkOptions) (*Graph, error) {
	if opts.Jobs < 1 {
		opts.Jobs = 32
	}
	w := &walker{b: b, opts: opts, g: newGraph()}
	if opts.Progress != nil {
		defer w.reportProgress()()
	}
	if n := opts.Cache.begin(); n > 0 {
		w.g.presize(n) // about as many nodes as the last walk read objects
	}
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(opts.Jobs + 1)
	w.eg, w.ctx = eg, ectx
	eg.Go(func() error { return store.ListAnyOrder(ectx, b, "", w.listed) })
	if err := eg.Wait(); err != nil {
		return nil, fmt.Errorf("walk %s: %w", b, err)
	}
	g := w.g
	if g.StoreDir == "" {
		g.StoreDir = nix.DefaultStoreDir
	}
	g.Stats = w.snapshot()
	if opts.Progress != nil {
		opts.Progress(g.Stats)
	}
	if err := opts.Cache.commit(); err != nil {
		return nil, err
	}
	return g, nil
}

// newGraph is an empty Graph, its maps made.
func newGraph() *Graph {
	return &Graph{StoreDir: "", oddIndex: make(map[string]int32), oddHash: make(map[int32]string), oddDrv: make(map[int32]string), bad: make(map[int32]string),
		full: make(map[int32]narCheck), roots: make(map[int32]time.Time), rootRecords: make(map[int32]bool), rootBatches: make(map[string]time.Time)}
}

// walker is a walk under way: the graph it fills, and the reads it runs in
// its group while the listing streams.
type walker struct {
	b     store.Bucket
	opts  WalkOptions
	g     *Graph
	mu    sync.Mutex // guards g while reads run
	eg    *errgroup.Group
	ctx   context.Context // the group's
	stats struct{ objects, narinfos, read, hits, requests atomic.Int64 }
}

// listed hands a listed object to the handler of its kind; an object of
// no kind the walk knows is passed over.
func (w *walker) listed(o store.Object) error {
	w.stats.objects.Add(1)
	if k := layout.Classify(o.Key); int(k) < len(walkKinds) && walkKinds[k] != nil {
		walkKinds[k](w, o)
	}
	return nil
}

// snapshot is the walk's figures so far.
func (w *walker) snapshot() WalkStats {
	s := &w.stats
	return WalkStats{Objects: s.objects.Load(), NarInfos: s.narinfos.Load(), Read: s.read.Load(),
		CacheHits: s.hits.Load(), Requests: s.requests.Load() + s.objects.Load()/store.PageSize + 1}
}

// reportProgress calls opts.Progress now and then until the function it
// returns is called.
func (w *walker) reportProgress() (stop func()) {
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				w.opts.Progress(w.snapshot())
			case <-quit:
				return
			}
		}
	}()
	return func() { close(quit); <-done }
}

// read returns a small object's content, from the cache when it holds
// the object at this ETag.
func (w *walker) read(ctx context.Context, o store.Object) ([]byte, error) {
	if data, ok := w.opts.Cache.get(o.Key, o.ETag); ok {
		w.stats.hits.Add(1)
		return data, nil
	}
	w.stats.requests.Add(1)
	data, err := w.b.Get(ctx, o.Key)
	if err != nil {
		return nil, err
	}
	w.stats.read.Add(1)
	if layout.Classify(o.Key) == layout.KindNarInfo {
		w.opts.Cache.put(o.Key, o.ETag, nix.CompactNarInfo(data))
	} else {
		w.opts.Cache.put(o.Key, o.ETag, data)
	}
	return data, nil
}

// readThen reads o in the group and hands its content to use; an object
// deleted since the listing is passed over.
func (w *walker) readThen(o store.Object, use func(data []byte) error) {
	w.eg.Go(func() error {
		data, err := w.read(w.ctx, o)
		if errors.Is(err, store.ErrNotExist) {
			return nil // deleted since the listing
		}
		if err != nil {
			return err
		}
		return use(data)
	})
}
