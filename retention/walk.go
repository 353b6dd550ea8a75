package retention

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"golang.org/x/sync/errgroup"

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
	StoreDir  string // of the first .narinfo read; /nix/store when none
	CacheInfo bool   // nix-cache-info is there
	Sweep     *Sweep // a gc marker found in the listing
	Pins      []Pin
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
func (g *Graph) logDrv(l logObject) string { return strings.TrimPrefix(g.str(l.key), LogPrefix) }

// realisation is a realisations/<id>.doi or build-trace-v2/<drv>/<output>.doi object.
type realisation struct {
	key str   // in the arena
	mod int64 // LastModified, Unix nanoseconds
	out int32 // node of its outPath; -1 when it cannot be read
}

// Where Nix keeps build logs and realisations in a binary cache: Nix 2.8
// to 2.34 realisations/<id>.doi, Nix 2.35 build-trace-v2/<drv>/<output>.doi.
const (
	LogPrefix         = "log/"
	RealisationPrefix = "realisations/"
	BuildTracePrefix  = "build-trace-v2/"
)

// isRealisationKey reports whether key is a realisation in either layout:
// both bodies name the output as "outPath", and both are kept, deleted and
// verified alike.
func isRealisationKey(key string) bool {
	return (strings.HasPrefix(key, RealisationPrefix) || strings.HasPrefix(key, BuildTracePrefix)) && strings.HasSuffix(key, ".doi")
}

// realisationOut is the outPath of a .doi: a store path or its base name
// (as Nix writes it).
func realisationOut(data []byte) (string, error) {
	var r struct {
		OutPath string `json:"outPath"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return "", err
	}
	if hashPart(r.OutPath) == "" {
		return "", fmt.Errorf("outPath %q is not a store path", r.OutPath)
	}
	return r.OutPath, nil
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
	ext    uint8 // in narExts, plus one; 0: the key is in the arena
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

// isNarInfoKey reports whether key is a top-level <hash>.narinfo.
func isNarInfoKey(key string) bool { return isHashKey(key, ".narinfo") }

// isListingKey reports whether key is a top-level <hash>.ls NAR listing.
func isListingKey(key string) bool { return isHashKey(key, ".ls") }

// isHashKey reports whether key is a top-level <hash><ext>.
func isHashKey(key, ext string) bool {
	return len(key) == 32+len(ext) && strings.HasSuffix(key, ext) && !strings.Contains(key, "/")
}

// Walk lists the whole store once, streaming, and reads each .narinfo,
// root and pin it has not read at the same ETag before.
func Walk(ctx context.Context, b store.Bucket, opts WalkOptions) (*Graph, error) {
	if opts.Jobs < 1 {
		opts.Jobs = 32
	}
	g := &Graph{StoreDir: "", oddIndex: make(map[string]int32), oddHash: make(map[int32]string), oddDrv: make(map[int32]string), bad: make(map[int32]string),
		full: make(map[int32]narCheck), roots: make(map[int32]time.Time), rootRecords: make(map[int32]bool), rootBatches: make(map[string]time.Time)}
	var mu sync.Mutex // guards g while reads run
	var stats struct{ objects, narinfos, read, hits, requests atomic.Int64 }
	snapshot := func() WalkStats {
		return WalkStats{Objects: stats.objects.Load(), NarInfos: stats.narinfos.Load(), Read: stats.read.Load(),
			CacheHits: stats.hits.Load(), Requests: stats.requests.Load() + stats.objects.Load()/store.PageSize + 1}
	}
	if opts.Progress != nil {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					opts.Progress(snapshot())
				case <-stop:
					return
				}
			}
		}()
		defer func() { close(stop); <-done }()
	}

	// read returns a small object's content, from the cache when it holds
	// the object at this ETag.
	read := func(ctx context.Context, o store.Object) ([]byte, error) {
		if data, ok := opts.Cache.get(o.Key, o.ETag); ok {
			stats.hits.Add(1)
			return data, nil
		}
		stats.requests.Add(1)
		data, err := b.Get(ctx, o.Key)
		if err != nil {
			return nil, err
		}
		stats.read.Add(1)
		if isNarInfoKey(o.Key) {
			opts.Cache.put(o.Key, o.ETag, compactNarInfo(data))
		} else {
			opts.Cache.put(o.Key, o.ETag, data)
		}
		return data, nil
	}

	if n := opts.Cache.begin(); n > 0 {
		g.presize(n) // about as many nodes as the last walk read objects
	}
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(opts.Jobs + 1)
	// readThen reads o in the group and hands its content to use; an
	// object deleted since the listing is passed over.
	readThen := func(o store.Object, use func(data []byte) error) {
		eg.Go(func() error {
			data, err := read(ectx, o)
			if errors.Is(err, store.ErrNotExist) {
				return nil // deleted since the listing
			}
			if err != nil {
				return err
			}
			return use(data)
		})
	}
	eg.Go(func() error {
		return b.List(ectx, "", func(o store.Object) error {
			stats.objects.Add(1)
			switch {
			case isNarInfoKey(o.Key):
				stats.narinfos.Add(1)
				readThen(o, func(data []byte) error {
					ni, perr := ParseNarInfo(data)
					sigOK := false
					if perr == nil {
						for _, k := range opts.Keys {
							if nix.VerifyNarInfo(ni, k) {
								sigOK = true
								break
							}
						}
					}
					mu.Lock()
					defer mu.Unlock()
					g.addNarInfo(o, ni, perr, sigOK, opts.NarHashes)
					return nil
				})
			case isListingKey(o.Key):
				mu.Lock()
				g.listings = append(g.listings, listing{node: g.intern(o.Key[:32]), mod: o.LastModified.UnixNano()})
				mu.Unlock()
			case strings.HasPrefix(o.Key, "nar/"):
				mu.Lock()
				nar := g.nar(g.internNAR(o.Key))
				nar.size, nar.mod, nar.listed = o.Size, o.LastModified.UnixNano(), true
				mu.Unlock()
			case o.Key == "nix-cache-info":
				g.CacheInfo = true
			case strings.HasPrefix(o.Key, RootBatchPrefix):
				readThen(o, func(data []byte) error {
					r, ok := parseRootBatch(data, o.LastModified)
					if !ok {
						r.PushedAt = o.LastModified // unreadable: it keeps nothing, and goes when old
					}
					mu.Lock()
					defer mu.Unlock()
					g.rootBatches[o.Key] = r.PushedAt
					for _, p := range r.Paths {
						h := hashPart(p)
						if h == "" {
							continue
						}
						i := g.intern(h)
						if r.PushedAt.After(g.roots[i]) {
							g.roots[i] = r.PushedAt
						}
					}
					return nil
				})
			case strings.HasPrefix(o.Key, RootPrefix):
				readThen(o, func(data []byte) error {
					h := strings.TrimPrefix(o.Key, RootPrefix)
					if len(h) != 32 {
						return nil // not ours
					}
					at := o.LastModified
					if r, ok := parseRoot(o.Key, data, o.LastModified); ok {
						at = r.PushedAt
					}
					mu.Lock()
					defer mu.Unlock()
					i := g.intern(h)
					g.rootRecords[i] = true
					if at.After(g.roots[i]) {
						g.roots[i] = at
					}
					return nil
				})
			case strings.HasPrefix(o.Key, LogPrefix) && strings.HasSuffix(o.Key, ".drv"):
				mu.Lock()
				g.logs = append(g.logs, logObject{key: g.addStr(o.Key), mod: o.LastModified.UnixNano()})
				mu.Unlock()
			case isRealisationKey(o.Key):
				eg.Go(func() error {
					data, err := read(ectx, o)
					if errors.Is(err, store.ErrNotExist) {
						return nil
					}
					if err != nil {
						return err
					}
					out, perr := realisationOut(data)
					mu.Lock()
					defer mu.Unlock()
					r := realisation{key: g.addStr(o.Key), mod: o.LastModified.UnixNano(), out: -1}
					if perr == nil { // one gc cannot read, it keeps
						r.out = g.intern(hashPart(out))
						if n := g.node(r.out); n.name.n == 0 && !n.present {
							n.name = g.addStr(path.Base(out)[33:])
						}
					}
					g.realisations = append(g.realisations, r)
					return nil
				})
			case strings.HasPrefix(o.Key, PinPrefix):
				readThen(o, func(data []byte) error {
					p, err := parsePin(strings.TrimPrefix(o.Key, PinPrefix), data, o.LastModified)
					if err != nil {
						return err
					}
					mu.Lock()
					defer mu.Unlock()
					g.Pins = append(g.Pins, p)
					return nil
				})
			case o.Key == SweepKey:
				eg.Go(func() error {
					stats.requests.Add(1)
					data, err := b.Get(ectx, o.Key)
					if err != nil {
						return nil // gone: the other gc ended
					}
					if s, err := parseSweep(data); err == nil {
						mu.Lock()
						g.Sweep = &s
						mu.Unlock()
					}
					return nil
				})
			}
			return nil
		})
	})
	if err := eg.Wait(); err != nil {
		return nil, fmt.Errorf("walk %s: %w", b, err)
	}
	if g.StoreDir == "" {
		g.StoreDir = nix.DefaultStoreDir
	}
	g.Stats = snapshot()
	if opts.Progress != nil {
		opts.Progress(g.Stats)
	}
	if err := opts.Cache.commit(); err != nil {
		return nil, err
	}
	return g, nil
}

// addNarInfo records a .narinfo. One that cannot be read is recorded as
// such (verify reports it; gc keeps it) with what it could read: its NAR,
// Deriver and References, so gc keeps what it refers to as for any other
// (a .narinfo without a References line refers to nothing, as for Nix).
func (g *Graph) addNarInfo(o store.Object, ni *narinfo.NarInfo, err error, sigOK, narHashes bool) {
	i := g.intern(o.Key[:32])
	n := g.node(i)
	n.present = true
	n.mod = o.LastModified.UnixNano()
	if err == nil && hashPart(ni.StorePath) != o.Key[:32] {
		err = fmt.Errorf("StorePath %s does not match the object name", ni.StorePath)
	}
	if ni == nil {
		ni = &narinfo.NarInfo{}
	}
	if err != nil {
		n.unreadable = true
		g.bad[i] = err.Error()
		g.unreadable = append(g.unreadable, o.Key)
		if hashPart(ni.StorePath) == o.Key[:32] {
			n.name = g.addStr(path.Base(ni.StorePath)[33:])
		}
		if ni.URL != "" {
			// Its NAR is not an orphan: gc keeps it with the .narinfo.
			n.nar = g.internNAR(ni.URL)
		}
	} else {
		if g.StoreDir == "" {
			g.StoreDir = path.Dir(ni.StorePath)
		}
		// Copies, so no node keeps its .narinfo's text alive.
		n.name = g.addStr(path.Base(ni.StorePath)[33:])
		n.comp = g.internComp(ni.Compression)
		n.fileSize = ni.FileSize
		if ni.NarHash != nil && narHashes {
			g.full[i] = narCheck{hash: ni.NarHash.String(), size: ni.NarSize}
		}
		n.nar = g.internNAR(ni.URL)
		n.sigOK = sigOK
	}
	if ni.Deriver != "" {
		drv := path.Base(ni.Deriver)
		n.hasDrv = true
		if d, ok := drvHash(drv); ok {
			n.deriver = d
		} else {
			g.oddDrv[i] = drv
		}
	}
	var refs [64]int32
	rs := refs[:0]
	for _, r := range ni.References {
		h := hashPart(r)
		if h == "" || h == o.Key[:32] {
			continue // self-references keep nothing
		}
		rs = append(rs, g.intern(h)) // intern may add a chunk of nodes: n stays valid
	}
	n.refs = g.addRefs(rs)
}

// drvHash is the decoded hash part of a derivation's file name, when it
// is <nixbase32>-<name>.drv (that hash names the derivation, as its
// store path's hash does).
func drvHash(drv string) ([20]byte, bool) {
	if len(drv) < 34 || drv[32] != '-' || !strings.HasSuffix(drv, ".drv") {
		return [20]byte{}, false
	}
	return decodeHash(drv[:32])
}

// internComp returns the index of a compression in g.comps.
func (g *Graph) internComp(c string) uint8 {
	for i, x := range g.comps {
		if x == c {
			return uint8(i)
		}
	}
	if len(g.comps) == 255 {
		return 0 // a cache of 255 compressions: not worth telling apart
	}
	g.comps = append(g.comps, strings.Clone(c))
	return uint8(len(g.comps) - 1)
}

// ParseNarInfo parses a .narinfo as leniently as Nix does. It reads the
// lines nixpush needs and leaves out those it does not know (another
// tool's), where go-nix's parser refuses them; a Sig line it cannot parse
// (another tool's scheme, any string) is left out too, as Nix ignores a
// signature it cannot check. A field that does not parse (NarHash, say)
// is an error, but the lines after it are read all the same: with an
// error, what it read (the URL, the References) comes back too. It
// allocates no line buffer of 1 MiB per .narinfo as go-nix's does, which
// a walk of ten thousand felt.
func ParseNarInfo(data []byte) (*narinfo.NarInfo, error) {
	ni := &narinfo.NarInfo{}
	var first error // the first field that does not parse
	text := string(data)
	for len(text) > 0 {
		var line string
		line, text, _ = strings.Cut(text, "\n")
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimPrefix(v, " ")
		var err error
		switch k {
		case "StorePath":
			ni.StorePath = v
		case "URL":
			ni.URL = v
		case "Compression":
			ni.Compression = v
		case "FileHash":
			ni.FileHash, err = nixhash.ParseAny(v, nil)
		case "FileSize":
			ni.FileSize, err = strconv.ParseUint(v, 10, 64)
		case "NarHash":
			ni.NarHash, err = nixhash.ParseAny(v, nil)
		case "NarSize":
			ni.NarSize, err = strconv.ParseUint(v, 10, 64)
		case "References":
			ni.References = strings.Fields(v)
		case "Deriver":
			if v != "unknown-deriver" {
				ni.Deriver = v
			}
		case "System":
			ni.System = v
		case "Sig":
			if sig, serr := signature.ParseSignature(v); serr == nil {
				ni.Signatures = append(ni.Signatures, sig)
			}
		case "CA":
			ni.CA = v
		}
		if err != nil && first == nil {
			first = fmt.Errorf("line %q: %v", line, err)
		}
	}
	if ni.Compression == "" {
		ni.Compression = "bzip2" // as Nix reads a .narinfo without the line
	}
	if first != nil {
		return ni, first
	}
	if ni.StorePath == "" || ni.URL == "" || ni.NarHash == nil || ni.NarSize == 0 {
		return ni, errors.New("lacks StorePath, URL, NarHash or NarSize")
	}
	return ni, nil
}
