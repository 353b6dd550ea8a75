package retention

import (
	"bytes"
	"compress/bzip2"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/nixpush/nixpush/store"
	"github.com/ulikunitz/xz"
	"golang.org/x/sync/errgroup"
)

// VerifyOptions say what verify checks.
type VerifyOptions struct {
	// Keys: each .narinfo must carry a signature one of them verifies;
	// none given, signatures are not checked.
	Keys []signature.PublicKey
	// Full downloads every NAR and checks its hash and size.
	Full bool
	// Jobs is how many NARs are downloaded at once (Full); <1 means 4.
	Jobs int
	// Filtered says whether a reference (hash-name) that has no .narinfo
	// was left out on purpose (the daemon's --exclude, --skip-signed-by):
	// consumers fetch it from another cache. nil: none was.
	Filtered func(ref string) bool
	Walk     WalkOptions
	// Checked, when set, is called after each NAR downloaded (Full) with
	// the NARs checked so far, their number in all, and the bytes read.
	Checked func(done, total int, bytes int64)
}

// Problem kinds.
const (
	Unreadable       = "unreadable"        // the .narinfo cannot be parsed
	NARMissing       = "nar-missing"       // its NAR object is not there
	NARSize          = "nar-size"          // its NAR object is not FileSize bytes
	NARHash          = "nar-hash"          // the NAR's content does not match (Full)
	ReferenceMissing = "reference-missing" // a reference's .narinfo is not there
	Signature        = "signature"         // no given key verifies it
	// RealisationDangling: a realisation's outPath has no .narinfo (the
	// Problem's Path is the outPath): a consumer with ca-derivations
	// follows it to a missing path and builds instead.
	RealisationDangling = "realisation-dangling"
	// PinMissing: a pin's path has no .narinfo (deleted by a gc that
	// overlapped the pin, or by hand): the pin keeps nothing.
	PinMissing = "pin-missing"
)

// Problem is one thing wrong with a path in the cache.
type Problem struct {
	Path   string `json:"path"`
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
}

// VerifyReport is what verify found.
type VerifyReport struct {
	Store    string    `json:"store"`
	Paths    int       `json:"paths"`
	NARs     int       `json:"nars_checked"`  // downloaded and hashed (Full)
	Bytes    int64     `json:"bytes_checked"` // their compressed bytes
	Problems []Problem `json:"problems"`      // by path
	Broken   int       `json:"broken"`        // paths with a problem
	// Dangling counts the realisations whose outPath has no .narinfo.
	Dangling int       `json:"dangling_realisations"`
	Requests int64     `json:"requests"`
	Walk     WalkStats `json:"walk"`
	Repair   *Repaired `json:"repair,omitempty"` // when repaired

	g      *Graph
	walk   WalkOptions
	broken []int32
	badNAR []string // NAR objects known bad (wrong size or content)
}

// dangling are the realisations of g (sorted by key) whose outPath has no
// .narinfo, or is one of doomed (when given).
func dangling(g *Graph, doomed []bool) []realisation {
	var out []realisation
	for _, r := range g.realisations {
		if r.out >= 0 && (!g.node(r.out).present || (doomed != nil && doomed[r.out])) {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b realisation) int { return bytes.Compare(g.bytesOf(a.key), g.bytesOf(b.key)) })
	return out
}

// Whole reports whether the cache is closed and sound.
func (r *VerifyReport) Whole() bool { return len(r.Problems) == 0 }

// Verify walks b and reports every .narinfo that cannot be read, whose
// NAR is missing or not of its size (with Full: not of its hash), whose
// references' .narinfos are missing, or that no given key signed; and
// every realisation whose outPath has no .narinfo.
func Verify(ctx context.Context, b store.Bucket, opts VerifyOptions) (*VerifyReport, error) {
	counted := store.Count(b)
	cb, _ := store.As[store.Bucket](counted)
	opts.Walk.Keys = opts.Keys
	opts.Walk.NarHashes = opts.Full
	g, err := Walk(ctx, cb, opts.Walk)
	if err != nil {
		return nil, err
	}
	rep := &VerifyReport{Store: b.String(), Walk: g.Stats, g: g, walk: opts.Walk, Problems: []Problem{}}
	var mu sync.Mutex
	problems := make(map[int32][]Problem)
	add := func(i int32, kind, detail string) {
		mu.Lock()
		defer mu.Unlock()
		problems[i] = append(problems[i], Problem{Path: g.path(i), Kind: kind, Detail: detail})
	}
	var full []int32
	var missingRefs [][2]int32 // referrer, reference
	for idx := range int32(g.nodeCount()) {
		n := g.node(idx)
		if !n.present {
			continue
		}
		rep.Paths++
		// The references of an unreadable .narinfo are checked too: gc
		// keeps them, and one gone is a hole of its own.
		for _, r := range g.refsOf(idx) {
			if rn := g.node(r); !rn.present {
				missingRefs = append(missingRefs, [2]int32{idx, r})
			}
		}
		if n.unreadable {
			add(idx, Unreadable, g.bad[idx])
			continue
		}
		nar, narKey := g.nar(n.nar), g.narKey(n.nar)
		switch {
		case !nar.listed:
			add(idx, NARMissing, narKey+" is not in the cache")
		case n.fileSize != 0 && uint64(nar.size) != n.fileSize:
			add(idx, NARSize, fmt.Sprintf("%s is %d bytes, the .narinfo says %d", narKey, nar.size, n.fileSize))
			rep.badNAR = append(rep.badNAR, narKey)
		default:
			full = append(full, idx)
		}
		if len(opts.Keys) > 0 && !n.sigOK {
			add(idx, Signature, "no signature by "+keyNames(opts.Keys))
		}
	}
	lastI, lastRefs := int32(-1), []string(nil)
	for _, m := range missingRefs {
		if m[0] != lastI { // references come by referrer: one read each
			lastI, lastRefs = m[0], referenceNames(ctx, cb, g, m[0])
		}
		name := g.hashOf(m[1])
		for _, ref := range lastRefs {
			if strings.HasPrefix(ref, name) {
				name = ref
			}
		}
		if opts.Filtered != nil && opts.Filtered(name) {
			continue
		}
		add(m[0], ReferenceMissing, name+" has no .narinfo in the cache")
	}
	for _, r := range dangling(g, nil) {
		rep.Dangling++
		rep.Problems = append(rep.Problems, Problem{Path: g.path(r.out), Kind: RealisationDangling,
			Detail: g.str(r.key) + " points at it, which has no .narinfo in the cache"})
	}
	for _, p := range g.Pins {
		if i, ok := g.lookup(hashPart(p.Path)); !ok || !g.node(i).present {
			rep.Problems = append(rep.Problems, Problem{Path: p.Path, Kind: PinMissing,
				Detail: fmt.Sprintf("pin %s keeps nothing: the path has no .narinfo in the cache; push it again: nixpush push --wait %s", p.Name, p.Path)})
		}
	}
	if opts.Full {
		if opts.Jobs < 1 {
			opts.Jobs = 4
		}
		eg, ectx := errgroup.WithContext(ctx)
		eg.SetLimit(opts.Jobs)
		for _, i := range full {
			url, comp, narHash, narSize := g.url(i), g.compression(i), g.full[i].hash, g.full[i].size
			eg.Go(func() error {
				size, err := checkNAR(ectx, cb, url, comp, narHash, narSize)
				mu.Lock()
				rep.NARs++
				rep.Bytes += size
				if opts.Checked != nil {
					opts.Checked(rep.NARs, len(full), rep.Bytes)
				}
				mu.Unlock()
				var bad *badNARError
				if errors.As(err, &bad) {
					add(i, NARHash, bad.Error())
					mu.Lock()
					rep.badNAR = append(rep.badNAR, url)
					mu.Unlock()
					return nil
				}
				if errors.Is(err, store.ErrNotExist) {
					add(i, NARMissing, url+" is not in the cache")
					return nil
				}
				return err
			})
		}
		if err := eg.Wait(); err != nil {
			return nil, err
		}
	}
	for i, ps := range problems {
		rep.broken = append(rep.broken, i)
		rep.Problems = append(rep.Problems, ps...)
	}
	rep.Broken = len(rep.broken)
	slices.SortFunc(rep.Problems, func(a, b Problem) int {
		return strings.Compare(a.Path+"\x00"+a.Kind, b.Path+"\x00"+b.Kind)
	})
	slices.Sort(rep.badNAR)
	rep.badNAR = slices.Compact(rep.badNAR)
	rep.Requests = counted.Requests()
	return rep, nil
}

// referenceNames reads node i's .narinfo again for the base names of its
// references (the walk keeps references as numbers, and a missing one has
// no .narinfo of its own to name it). Only broken paths pay the read.
func referenceNames(ctx context.Context, b store.Bucket, g *Graph, i int32) []string {
	data, err := b.Get(ctx, g.hashOf(i)+".narinfo")
	if err != nil {
		return nil
	}
	ni, _ := ParseNarInfo(data) // an unreadable one's References are read too
	return ni.References
}

func keyNames(keys []signature.PublicKey) string {
	var names []string
	for _, k := range keys {
		names = append(names, k.Name)
	}
	return strings.Join(names, ", ")
}

type badNARError struct{ msg string }

func (e *badNARError) Error() string { return e.msg }

// checkNAR downloads a NAR, decompresses it and compares its hash and
// size with the .narinfo's; it returns the compressed bytes read.
func checkNAR(ctx context.Context, b store.Bucket, url, comp, narHash string, narSize uint64) (int64, error) {
	want, err := nixhash.ParseAny(narHash, nil)
	if err != nil {
		return 0, &badNARError{fmt.Sprintf("NarHash %q: %v", narHash, err)}
	}
	rc, err := b.Open(ctx, url)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	counted := &countReader{r: rc}
	var r io.Reader = counted
	switch comp {
	case "none", "":
	case "zstd":
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<30))
		if err != nil {
			return 0, err
		}
		defer d.Close()
		r = d
	case "xz":
		x, err := xz.NewReader(r)
		if err != nil {
			return counted.n, &badNARError{fmt.Sprintf("%s: not xz: %v", url, err)}
		}
		r = x
	case "bzip2":
		r = bzip2.NewReader(r)
	default:
		return 0, &badNARError{fmt.Sprintf("%s: compression %q not known to verify", url, comp)}
	}
	h := sha256.New()
	size, err := io.Copy(h, r)
	if err != nil {
		if ctx.Err() != nil {
			return counted.n, ctx.Err()
		}
		return counted.n, &badNARError{fmt.Sprintf("%s: cannot decompress (%s): %v", url, comp, err)}
	}
	if uint64(size) != narSize {
		return counted.n, &badNARError{fmt.Sprintf("%s: NAR is %d bytes, the .narinfo says %d", url, size, narSize)}
	}
	if string(h.Sum(nil)) != string(want.Digest()) {
		return counted.n, &badNARError{fmt.Sprintf("%s: NAR hash differs from the .narinfo's %s", url, narHash)}
	}
	return counted.n, nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// Repaired is what a repair deleted.
type Repaired struct {
	// Deleted are the paths whose .narinfo went: the broken ones and every
	// path referring to one, however indirectly.
	Deleted []string `json:"deleted"`
	NARs    int      `json:"nars"` // bad NAR objects deleted
	// Realisations deleted: those pointing at a missing path or at one
	// deleted here (first). They are not pushed again: the daemon pushes
	// a realisation only when the hook hands it the derivation.
	Realisations int `json:"realisations"`
	// Warnings: what went wrong without undoing the repair (its marker
	// could not be marked finished).
	Warnings []string `json:"warnings,omitempty"`
}

// RepairOptions say how to repair.
type RepairOptions struct {
	Host   string
	Window time.Duration // as gc's; 0 means DefaultWindow
	// SingleGC: only one gc or repair ever runs on this store (as gc's).
	SingleGC bool
}

// Repair deletes the .narinfos of the broken paths of rep and of every
// path referring to them, referrers first (the cache stays closed at
// each step), their NAR listings, and the NAR objects found bad; before
// them, the realisations pointing at a path missing or deleted here. It
// holds gc's marker while it deletes, so pushing daemons check again
// what they relied on. Pushing the deleted paths again is the caller's.
func Repair(ctx context.Context, b store.Bucket, rep *VerifyReport, opts RepairOptions) (*Repaired, error) {
	if rep.g == nil {
		return nil, errors.New("repair: no walk to repair from")
	}
	if len(rep.broken) == 0 && len(rep.badNAR) == 0 && rep.Dangling == 0 {
		return &Repaired{}, nil
	}
	// The same exclusion as gc's: no gc or other repair sweeps beside it.
	window := opts.Window
	if window <= 0 {
		window = DefaultWindow
	}
	sw, err := startSweep(ctx, b, Sweep{Host: opts.Host, Kind: "repair", WindowSeconds: seconds(window)}, window, opts.SingleGC)
	if err != nil {
		return nil, err
	}
	out := &Repaired{}
	defer func() {
		if err := sw.end(ctx); err != nil {
			out.Warnings = append(out.Warnings, err.Error())
		}
	}()
	// List again under the marker: a .narinfo written since verify's walk
	// and referring to a broken path goes too (one written after the
	// marker is its daemon's to check again).
	walk := rep.walk
	walk.Progress = nil
	g, err := Walk(ctx, b, walk)
	if err != nil {
		return nil, err
	}
	// Referrers of each node, to find everything above the broken paths.
	above := make(map[int32][]int32)
	for i := range int32(g.nodeCount()) {
		if g.node(i).present {
			for _, r := range g.refsOf(i) {
				above[r] = append(above[r], i)
			}
		}
	}
	// Only what is still broken under the marker goes: since verify's
	// walk a push may have uploaded again what a broken .narinfo lacked
	// (its check after writes does exactly that), and deleting it then
	// would break what that push acknowledged.
	unseen := make(map[string]bool) // paths with a problem a listing cannot show
	for _, p := range rep.Problems {
		if p.Kind == Unreadable || p.Kind == Signature || p.Kind == NARHash {
			unseen[p.Path] = true
		}
	}
	doomed := make([]bool, g.nodeCount())
	var stack []int32
	for _, old := range rep.broken {
		i, ok := g.lookup(rep.g.hashOf(old))
		if ok && stillBroken(rep.g, old, g, i, unseen[rep.g.path(old)]) {
			doomed[i] = true
			stack = append(stack, i)
		}
	}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, up := range above[i] {
			if !doomed[up] {
				doomed[up] = true
				stack = append(stack, up)
			}
		}
	}
	var dead []int32
	referrers := make([]int32, g.nodeCount())
	for i := range int32(g.nodeCount()) {
		if doomed[i] && g.node(i).present {
			dead = append(dead, i)
			out.Deleted = append(out.Deleted, g.path(i))
			for _, r := range g.refsOf(i) {
				referrers[r]++
			}
		}
	}
	slices.Sort(out.Deleted)
	del := sw.deleter(nil)
	// Realisations first: none points at a deleted path at any step.
	real := dangling(g, doomed)
	if err := del.each(ctx, len(real), func(k int) string { return g.str(real[k].key) }); err != nil {
		return out, err
	}
	out.Realisations = len(real)
	if err := del.waves(ctx, g, dead, referrers); err != nil {
		return out, err
	}
	var listings []string
	for _, l := range g.listings {
		if doomed[l.node] && g.node(l.node).present {
			listings = append(listings, g.hashOf(l.node)+".ls")
		}
	}
	slices.Sort(listings)
	if err := del.all(ctx, listings); err != nil {
		return out, err
	}
	if err := del.all(ctx, unchangedNARs(rep.g, g, rep.badNAR)); err != nil {
		return out, err
	}
	out.NARs = len(rep.badNAR)
	return out, nil
}

// stillBroken reports whether node i of g, the walk under repair's marker,
// is still broken, node old of was having been found broken by verify:
// its .narinfo is there and lacks its NAR (or the NAR is not of its size)
// or a reference's .narinfo; or verify found what a listing cannot show
// (unseen: unreadable, unsigned, a NAR of the wrong hash) and it is the
// very .narinfo verify read (the same modification time), with the very
// NAR.
func stillBroken(was *Graph, old int32, g *Graph, i int32, unseen bool) bool {
	n := g.node(i)
	if !n.present {
		return false
	}
	for _, r := range g.refsOf(i) {
		if !g.node(r).present {
			return true
		}
	}
	if !n.unreadable && n.nar >= 0 {
		nar := g.nar(n.nar)
		if !nar.listed || (n.fileSize != 0 && uint64(nar.size) != n.fileSize) {
			return true
		}
	}
	o := was.node(old)
	if !unseen || o.mod != n.mod {
		return false // healed, or written again since verify read it
	}
	if n.unreadable || n.nar < 0 || o.nar < 0 {
		return true
	}
	// Unsigned, or a NAR of the wrong hash: still so if the NAR is the
	// object verify read.
	a, b := was.nar(o.nar), g.nar(n.nar)
	return was.narKey(o.nar) == g.narKey(n.nar) && a.mod == b.mod && a.size == b.size
}

// unchangedNARs is the NARs of keys (found bad by verify's walk, was)
// that are the same objects in g: one written again since is left alone.
func unchangedNARs(was, g *Graph, keys []string) []string {
	var out []string
	for _, k := range keys {
		i, ok1 := was.narLookup(k)
		j, ok2 := g.narLookup(k)
		if ok1 && ok2 && g.nar(j).listed && was.nar(i).mod == g.nar(j).mod && was.nar(i).size == g.nar(j).size {
			out = append(out, k)
		}
	}
	return out
}
