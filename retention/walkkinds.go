package retention

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// walkKinds is what the walk does with a listed object of each kind
// (layout.Classify tells it by the key): record it in the graph, in the
// walker's group when it must be read. Kinds without a handler are passed
// over.
var walkKinds = [...]func(w *walker, o store.Object){
	layout.KindNarInfo:     (*walker).narInfo,
	layout.KindListing:     (*walker).listing,
	layout.KindNAR:         (*walker).narFile,
	layout.KindCacheInfo:   (*walker).cacheInfo,
	layout.KindRootBatch:   (*walker).rootBatch,
	layout.KindRoot:        (*walker).root,
	layout.KindLog:         (*walker).log,
	layout.KindRealisation: (*walker).realisation,
	layout.KindBuildTrace:  (*walker).realisation,
	layout.KindPin:         (*walker).pin,
	layout.KindSweep:       (*walker).sweep,
}

// narInfo reads a .narinfo (leniently: nix.ParseNarInfo), checks its
// signatures against the given keys and records it.
func (w *walker) narInfo(o store.Object) {
	w.stats.narinfos.Add(1)
	w.readThen(o, func(data []byte) error {
		ni, perr := nix.ParseNarInfo(data)
		sigOK := false
		if perr == nil {
			for _, k := range w.opts.Keys {
				if nix.VerifyNarInfo(ni, k) {
					sigOK = true
					break
				}
			}
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		w.g.addNarInfo(o, ni, perr, sigOK, w.opts.NarHashes)
		return nil
	})
}

// listing records a <hash>.ls NAR listing, by its node.
func (w *walker) listing(o store.Object) {
	w.mu.Lock()
	w.g.listings = append(w.g.listings, listing{node: w.g.intern(o.Key[:32]), mod: o.LastModified.UnixNano()})
	w.mu.Unlock()
}

// narFile records a NAR object as listed, with its size and age.
func (w *walker) narFile(o store.Object) {
	w.mu.Lock()
	nar := w.g.nar(w.g.internNAR(o.Key))
	nar.size, nar.mod, nar.listed = o.Size, o.LastModified.UnixNano(), true
	w.mu.Unlock()
}

func (w *walker) cacheInfo(store.Object) { w.g.CacheInfo = true }

// rootBatch reads a batch root record: each path it names was pushed at
// its pushed_at, unless a later record says later.
func (w *walker) rootBatch(o store.Object) {
	w.readThen(o, func(data []byte) error {
		r, ok := layout.ParseRootBatch(data, o.LastModified)
		if !ok {
			r.PushedAt = o.LastModified // unreadable: it keeps nothing, and goes when old
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		g := w.g
		g.rootBatches[o.Key] = r.PushedAt
		for _, p := range r.Paths {
			h := nix.StoreHashPart(p)
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
}

// root reads a root record, nixpush/roots/<hash>: its path was pushed at
// its pushed_at (its LastModified when unreadable).
func (w *walker) root(o store.Object) {
	w.readThen(o, func(data []byte) error {
		h := strings.TrimPrefix(o.Key, layout.RootPrefix)
		at := o.LastModified
		if r, ok := layout.ParseRoot(o.Key, data, o.LastModified); ok {
			at = r.PushedAt
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		i := w.g.intern(h)
		w.g.rootRecords[i] = true
		if at.After(w.g.roots[i]) {
			w.g.roots[i] = at
		}
		return nil
	})
}

// log records a build log, log/<drv>.
func (w *walker) log(o store.Object) {
	w.mu.Lock()
	w.g.logs = append(w.g.logs, logObject{key: w.g.addStr(o.Key), mod: o.LastModified.UnixNano()})
	w.mu.Unlock()
}

// realisation reads a realisation for its outPath; one that cannot be
// read points at nothing (gc keeps it).
func (w *walker) realisation(o store.Object) {
	w.readThen(o, func(data []byte) error {
		out, perr := realisationOut(data)
		w.mu.Lock()
		defer w.mu.Unlock()
		g := w.g
		r := realisation{key: g.addStr(o.Key), mod: o.LastModified.UnixNano(), out: -1}
		if perr == nil { // one gc cannot read, it keeps
			r.out = g.intern(nix.StoreHashPart(out))
			if n := g.node(r.out); n.name.n == 0 && !n.present {
				n.name = g.addStr(path.Base(out)[33:])
			}
		}
		g.realisations = append(g.realisations, r)
		return nil
	})
}

// pin reads a pin; one that cannot be read fails the walk.
func (w *walker) pin(o store.Object) {
	w.readThen(o, func(data []byte) error {
		p, err := layout.ParsePin(strings.TrimPrefix(o.Key, layout.PinPrefix), data, o.LastModified)
		if err != nil {
			return err
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		w.g.Pins = append(w.g.Pins, p)
		return nil
	})
}

// sweep reads gc's marker, never from the cache (it changes in place).
func (w *walker) sweep(o store.Object) {
	w.eg.Go(func() error {
		w.stats.requests.Add(1)
		data, err := w.b.Get(w.ctx, o.Key)
		if err != nil {
			return nil // gone: the other gc ended
		}
		if s, err := layout.ParseSweep(data); err == nil {
			w.mu.Lock()
			w.g.Sweep = &s
			w.mu.Unlock()
		}
		return nil
	})
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
	if nix.StoreHashPart(r.OutPath) == "" {
		return "", fmt.Errorf("outPath %q is not a store path", r.OutPath)
	}
	return r.OutPath, nil
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
	if err == nil && nix.StoreHashPart(ni.StorePath) != o.Key[:32] {
		err = fmt.Errorf("StorePath %s does not match the object name", ni.StorePath)
	}
	if ni == nil {
		ni = &narinfo.NarInfo{}
	}
	if err != nil {
		n.unreadable = true
		g.bad[i] = err.Error()
		g.unreadable = append(g.unreadable, o.Key)
		if nix.StoreHashPart(ni.StorePath) == o.Key[:32] {
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
		h := nix.StoreHashPart(r)
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
