package retention

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
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
	v := &verifier{g: g, rep: rep, problems: make(map[int32][]Problem)}
	full, missingRefs := v.checkNarInfos(opts.Keys)
	v.checkReferences(ctx, cb, missingRefs, opts.Filtered)
	for _, r := range dangling(g, nil) {
		rep.Dangling++
		rep.Problems = append(rep.Problems, Problem{Path: g.path(r.out), Kind: RealisationDangling,
			Detail: g.str(r.key) + " points at it, which has no .narinfo in the cache"})
	}
	for _, p := range g.Pins {
		if i, ok := g.lookup(nix.StoreHashPart(p.Path)); !ok || !g.node(i).present {
			rep.Problems = append(rep.Problems, Problem{Path: p.Path, Kind: PinMissing,
				Detail: fmt.Sprintf("pin %s keeps nothing: the path has no .narinfo in the cache; push it again: nixpush push --wait %s", p.Name, p.Path)})
		}
	}
	if opts.Full {
		if err := v.checkNARs(ctx, cb, full, opts); err != nil {
			return nil, err
		}
	}
	for i, ps := range v.problems {
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

// verifier is a verify under way: the problems found, by node.
type verifier struct {
	g        *Graph
	rep      *VerifyReport
	mu       sync.Mutex // guards problems and rep while NARs are checked
	problems map[int32][]Problem
}

// add records a problem of node i.
func (v *verifier) add(i int32, kind, detail string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.problems[i] = append(v.problems[i], Problem{Path: v.g.path(i), Kind: kind, Detail: detail})
}

// checkNarInfos checks each .narinfo against the listing: readable, its
// NAR there and of its size, signed by one of keys (when given). It
// returns the nodes whose NAR --full may download, and the references
// whose .narinfo is missing (referrer, reference), by referrer.
func (v *verifier) checkNarInfos(keys []signature.PublicKey) (full []int32, missingRefs [][2]int32) {
	g, rep := v.g, v.rep
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
			v.add(idx, Unreadable, g.bad[idx])
			continue
		}
		nar, narKey := g.nar(n.nar), g.narKey(n.nar)
		switch {
		case !nar.listed:
			v.add(idx, NARMissing, narKey+" is not in the cache")
		case n.fileSize != 0 && uint64(nar.size) != n.fileSize:
			v.add(idx, NARSize, fmt.Sprintf("%s is %d bytes, the .narinfo says %d", narKey, nar.size, n.fileSize))
			rep.badNAR = append(rep.badNAR, narKey)
		default:
			full = append(full, idx)
		}
		if len(keys) > 0 && !n.sigOK {
			v.add(idx, Signature, "no signature by "+keyNames(keys))
		}
	}
	return full, missingRefs
}

// checkReferences reports the missing references, named as their
// referrer's .narinfo names them, but for those left out on purpose.
func (v *verifier) checkReferences(ctx context.Context, b store.Bucket, missingRefs [][2]int32, filtered func(string) bool) {
	g := v.g
	lastI, lastRefs := int32(-1), []string(nil)
	for _, m := range missingRefs {
		if m[0] != lastI { // references come by referrer: one read each
			lastI, lastRefs = m[0], referenceNames(ctx, b, g, m[0])
		}
		name := g.hashOf(m[1])
		for _, ref := range lastRefs {
			if strings.HasPrefix(ref, name) {
				name = ref
			}
		}
		if filtered != nil && filtered(name) {
			continue
		}
		v.add(m[0], ReferenceMissing, name+" has no .narinfo in the cache")
	}
}

// referenceNames reads node i's .narinfo again for the base names of its
// references (the walk keeps references as numbers, and a missing one has
// no .narinfo of its own to name it). Only broken paths pay the read.
func referenceNames(ctx context.Context, b store.Bucket, g *Graph, i int32) []string {
	data, err := b.Get(ctx, g.hashOf(i)+layout.NarInfoExt)
	if err != nil {
		return nil
	}
	ni, _ := nix.ParseNarInfo(data) // an unreadable one's References are read too
	return ni.References
}

func keyNames(keys []signature.PublicKey) string {
	var names []string
	for _, k := range keys {
		names = append(names, k.Name)
	}
	return strings.Join(names, ", ")
}
