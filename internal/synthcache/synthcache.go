// synthcache writes synthetic binary caches for tests and
// benchmarks of gc and verify: N signed paths in closures of realistic
// shape (a shared base every project refers to, projects of a few to a few
// hundred paths, each path referring to a handful of earlier ones, chains
// giving depth), roots of which a share is old (dead closures), pins,
// build logs, NAR listings and realisations. The same Options give the
// same cache, byte for byte (the signing key and every age come from the
// seed and Options.Now).
package synthcache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"golang.org/x/sync/errgroup"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// Version names the caches this package writes: a change to what it
// writes changes it, so that a cache kept on disk (the benchmark's) is not
// taken for the new one.
const Version = "v1"

// Options shape a synthetic cache.
type Options struct {
	Paths int    // .narinfos in all
	Seed  uint64 // the same seed, the same cache
	// Now is the time ages are counted back from; zero means time.Now().
	Now time.Time
	// Dead is the share of projects whose root is older than OldRoot (gc
	// deletes their closures but for what live ones share); 0 means 0.4.
	Dead float64
	// OldRoot is the age of a dead project's root; 0 means 60 days.
	OldRoot time.Duration
	// Pins is how many dead projects are pinned (kept all the same).
	Pins int
	// Logs, Listings, Realisations are the shares of paths with a build
	// log, a <hash>.ls NAR listing, a realisation.
	Logs, Listings, Realisations float64
	// InGrace is the share of .narinfos written a minute before Now
	// (a push in progress: gc keeps them); the others are two days old.
	// Only a file:// cache (WriteDir) can date its objects.
	InGrace float64
	// Jobs is how many paths are written at once; <1 means 16.
	Jobs int
}

// Defaults are a cache like a build farm's: 40% of the projects dead, a
// few pins, logs for a third of the paths, listings for a tenth,
// realisations for a twentieth, 0.5% in the grace period.
func Defaults(paths int, seed uint64) Options {
	return Options{Paths: paths, Seed: seed, Dead: 0.4, Pins: 3, Logs: 0.3, Listings: 0.1, Realisations: 0.05, InGrace: 0.005}
}

// Cache says what was written.
type Cache struct {
	PublicKey string // name:base64, to verify with
	Paths     int
	Projects  int
	Objects   int64
}

// Object is one object of the cache: its key, content and age.
type Object struct {
	Key  string
	Data []byte
	Mod  time.Time
}

// WriteDir writes the cache into dir, a file:// store's directory, with
// each object's modification time (so its age) set.
func WriteDir(ctx context.Context, dir string, opts Options) (*Cache, error) {
	var mkdir sync.Map
	return Generate(ctx, opts, func(o Object) error {
		p := filepath.Join(dir, filepath.FromSlash(o.Key))
		d := filepath.Dir(p)
		if _, ok := mkdir.Load(d); !ok {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
			mkdir.Store(d, true)
		}
		if err := os.WriteFile(p, o.Data, 0o644); err != nil {
			return err
		}
		return os.Chtimes(p, o.Mod, o.Mod)
	})
}

// WriteBucket writes the cache into b (a MinIO bucket, say). The store
// dates the objects itself: every object is new, and a gc must be given a
// grace period shorter than the time since.
func WriteBucket(ctx context.Context, b store.Store, opts Options) (*Cache, error) {
	return Generate(ctx, opts, func(o Object) error {
		return b.Put(ctx, o.Key, bytes.NewReader(o.Data), int64(len(o.Data)), "application/octet-stream")
	})
}

// Generate calls put for each object of the cache, from opts.Jobs
// goroutines at once.
func Generate(ctx context.Context, opts Options, put func(Object) error) (*Cache, error) {
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	if opts.Dead == 0 {
		opts.Dead = 0.4
	}
	if opts.OldRoot == 0 {
		opts.OldRoot = 60 * 24 * time.Hour
	}
	if opts.Jobs < 1 {
		opts.Jobs = 16
	}
	sk, pk, err := signature.GenerateKeypair("synth-1", rand.NewChaCha8(seed32(opts.Seed, "key")))
	if err != nil {
		return nil, err
	}
	g := &gen{opts: opts, sk: sk}
	g.plan()
	out := &Cache{PublicKey: pk.String(), Paths: opts.Paths, Projects: len(g.projects)}
	var objects atomic.Int64
	emit := func(o Object) error {
		objects.Add(1)
		return put(o)
	}
	if err := emit(Object{Key: layout.CacheInfoKey, Data: []byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"), Mod: opts.Now.Add(-90 * 24 * time.Hour)}); err != nil {
		return nil, err
	}
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(opts.Jobs)
	for p := range g.projects {
		eg.Go(func() error {
			if err := ectx.Err(); err != nil {
				return err
			}
			return g.project(p, emit)
		})
	}
	if err := eg.Wait(); err != nil {
		return nil, err
	}
	out.Objects = objects.Load()
	return out, nil
}

// project is a closure: paths [start, start+size) of the cache. Project 0
// is the base every other refers to.
type project struct {
	start, size int
	dead        bool
	pinned      bool
}

type gen struct {
	opts     Options
	sk       signature.SecretKey
	projects []project
}

// plan cuts the paths into projects: a base of 2% (at least one path),
// then projects of 5 to 400 paths.
func (g *gen) plan() {
	r := rand.New(rand.NewPCG(g.opts.Seed, 1))
	n := g.opts.Paths
	base := max(1, min(n, n/50))
	g.projects = append(g.projects, project{start: 0, size: base})
	for at := base; at < n; {
		size := min(n-at, 5+r.IntN(396))
		g.projects = append(g.projects, project{start: at, size: size, dead: r.Float64() < g.opts.Dead})
		at += size
	}
	pins := g.opts.Pins
	for i := range g.projects {
		if pins > 0 && g.projects[i].dead {
			g.projects[i].pinned = true
			pins--
		}
	}
}

// path is the store path of path number i.
func (g *gen) path(i int) string {
	h := sha256.Sum256(fmt.Appendf(nil, "synth %d path %d", g.opts.Seed, i))
	return nix.DefaultStoreDir + "/" + nixbase32.EncodeToString(h[:20]) + "-" + name(i)
}

func name(i int) string { return fmt.Sprintf("synth-%d-%d", i%97, i) }

func (g *gen) drv(i int) string {
	h := sha256.Sum256(fmt.Appendf(nil, "synth %d drv %d", g.opts.Seed, i))
	return nix.DefaultStoreDir + "/" + nixbase32.EncodeToString(h[:20]) + "-" + name(i) + ".drv"
}

// project emits project p: its paths, then its root and pin.
func (g *gen) project(p int, emit func(Object) error) error {
	r := rand.New(rand.NewPCG(g.opts.Seed, uint64(p)+2))
	for k := range g.projects[p].size {
		if err := g.projectPath(r, p, k, emit); err != nil {
			return err
		}
	}
	if p == 0 {
		return nil // the base is kept by what refers to it
	}
	return g.root(p, emit)
}

// projectPath emits path k of project p: its NAR and .narinfo and, as r
// draws them, its listing, build log and realisation.
func (g *gen) projectPath(r *rand.Rand, p, k int, emit func(Object) error) error {
	now := g.opts.Now
	old := now.Add(-48 * time.Hour)
	i := g.projects[p].start + k
	path := g.path(i)
	refPaths := g.refs(r, p, k)
	narData, size, err := narOf(path, refPaths)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(narData)
	hash := nixhash.MustNewHash(nixhash.SHA256, sum[:])
	url := layout.NarKey(nixbase32.EncodeToString(sum[:]), "")
	ni, err := nix.NarInfo(nix.PathInfo{Path: path, NarHash: *hash, NarSize: uint64(len(narData)), References: refPaths, Deriver: g.drv(i)},
		nix.Upload{URL: url, Compression: "none", FileHash: *hash, FileSize: uint64(len(narData))}, g.sk)
	if err != nil {
		return err
	}
	mod := old
	if r.Float64() < g.opts.InGrace {
		mod = now.Add(-time.Minute)
	}
	hp := nix.HashPart(path)
	if err := emit(Object{Key: url, Data: narData, Mod: mod.Add(-time.Second)}); err != nil {
		return err
	}
	if r.Float64() < g.opts.Listings {
		ls := fmt.Appendf(nil, `{"version":1,"root":{"type":"regular","size":%d}}`, size)
		if err := emit(Object{Key: hp + layout.ListingExt, Data: ls, Mod: mod}); err != nil {
			return err
		}
	}
	if err := emit(Object{Key: layout.NarInfoKey(path), Data: []byte(ni.String()), Mod: mod}); err != nil {
		return err
	}
	if r.Float64() < g.opts.Logs {
		if err := emit(Object{Key: layout.LogKey(g.drv(i)), Data: fmt.Appendf(nil, "building %s\n", name(i)), Mod: mod}); err != nil {
			return err
		}
	}
	if r.Float64() < g.opts.Realisations {
		h := sha256.Sum256([]byte(g.drv(i)))
		id := "sha256:" + hex.EncodeToString(h[:]) + "!out"
		body, _ := json.Marshal(map[string]any{"dependentRealisations": map[string]any{}, "id": id, "outPath": filepath.Base(path), "signatures": []string{}})
		if err := emit(Object{Key: layout.RealisationKey(id), Data: body, Mod: mod}); err != nil {
			return err
		}
	}
	return nil
}

// refs draws the references of path k of project p: the previous path
// (depth), up to five earlier ones of the project, up to three of the
// base, and now and then the path itself. Sorted, without duplicates.
func (g *gen) refs(r *rand.Rand, p, k int) []string {
	pr, base := g.projects[p], g.projects[0]
	i := pr.start + k
	refs := map[int]bool{}
	if k > 0 {
		refs[i-1] = true
		for range r.IntN(6) {
			refs[pr.start+r.IntN(k)] = true
		}
	}
	if p > 0 {
		for range 1 + r.IntN(3) {
			refs[base.start+r.IntN(base.size)] = true
		}
	}
	var refPaths []string
	for j := range refs {
		refPaths = append(refPaths, g.path(j))
	}
	if r.IntN(10) == 0 {
		refPaths = append(refPaths, g.path(i)) // a self-reference, as Nix has them
	}
	return sortedUnique(refPaths)
}

// narOf is the NAR of path's one regular file, which names path and its
// references, and that file's size.
func narOf(path string, refPaths []string) ([]byte, int, error) {
	var buf bytes.Buffer
	nw, err := nar.NewWriter(&buf)
	if err != nil {
		return nil, 0, err
	}
	content := fmt.Appendf(nil, "%s\n%s\n", path, strings.Join(refPaths, "\n"))
	if err := nw.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(content))}); err != nil {
		return nil, 0, err
	}
	nw.Write(content)
	if err := nw.Close(); err != nil {
		return nil, 0, err
	}
	return buf.Bytes(), len(content), nil
}

// root emits project p's root record, its newest path pushed an hour ago
// (OldRoot ago if the project is dead), and its pin if it has one.
func (g *gen) root(p int, emit func(Object) error) error {
	pr, now := g.projects[p], g.opts.Now
	top := g.path(pr.start + pr.size - 1)
	pushed := now.Add(-time.Hour)
	if pr.dead {
		pushed = now.Add(-g.opts.OldRoot)
	}
	root, _ := json.Marshal(layout.Root{Path: top, PushedAt: pushed.UTC(), Host: "synth"})
	if err := emit(Object{Key: layout.RootKey(top), Data: root, Mod: pushed}); err != nil {
		return err
	}
	if pr.pinned {
		pin, _ := json.Marshal(map[string]any{"path": top, "pinned_at": pushed.UTC()})
		if err := emit(Object{Key: layout.PinKey(fmt.Sprintf("synth-%d", p)), Data: pin, Mod: pushed}); err != nil {
			return err
		}
	}
	return nil
}

func sortedUnique(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	slices.Sort(out)
	return out
}

// seed32 is a 32-byte ChaCha8 seed made of seed and a purpose.
func seed32(seed uint64, what string) [32]byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seed)
	return sha256.Sum256(append(b[:], what...))
}
