package retention_test

// TestInterleavings is issue 18's randomized interleaving test: daemons
// (real uploader.Uploaders), gcs, verify --repair and pins work on one
// in-memory bucket, every request of every actor goes through a
// deterministic scheduler that grants one at a time (seeded), and after
// every step the bucket is checked:
//
//	(a) every .narinfo has its NAR and the .narinfo of each reference,
//	    except while a daemon job that wrote it (its push and the retries
//	    that follow, as the daemon's queue makes them) is still under way;
//	(b) no two sweeps (gc, repair) delete at once;
//	(c) every acknowledged root and pin has its .narinfo (and so, by (a),
//	    its closure); at the end, with every job over, (a) without
//	    exceptions, and no job left given up.
//
// NIXPUSH_INTERLEAVE_SEEDS=n runs n seeds per family; NIXPUSH_INTERLEAVE_SEED=
// family:seed[,seed...] replays those with the full trace;
// NIXPUSH_INTERLEAVE_FAMILIES=H1,H3 picks families; NIXPUSH_INTERLEAVE_KEEPGOING=1
// runs every seed and lists all the failing ones instead of stopping at the
// first of each family.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/rs/zerolog"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/narpack"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/retention"
	"github.com/nixpush/nixpush/uploader"
)

// universe is a small store of test paths with real file content and the
// PathInfoSource that answers for it from memory.
type universe struct {
	dir    string
	infos  map[string]nix.PathInfo
	paths  []string          // in the order made: references come first
	old    map[string]bool   // pushed long before the run
	names  map[string]string // hash part → name, for traces
	byName map[string]string // name → path
}

func newUniverse(dir string) *universe {
	return &universe{dir: dir, infos: map[string]nix.PathInfo{}, old: map[string]bool{}, names: map[string]string{}, byName: map[string]string{}}
}

// add makes a path called name holding content and referring to refs,
// in that order (Nix sorts them; the order is what a test chooses).
func (u *universe) add(name string, content []byte, refs ...string) (string, error) {
	sum := sha256.Sum256([]byte("interleave/" + name))
	hash := nixbase32.EncodeToString(sum[:20])
	p := filepath.Join(u.dir, hash+"-"+name)
	if err := os.MkdirAll(u.dir, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(p, content, 0o444); err != nil {
		return "", err
	}
	h := sha256.New()
	var n countWriter
	if err := nar.DumpPath(multiWriter{h, &n}, p); err != nil {
		return "", err
	}
	u.infos[p] = nix.PathInfo{Path: p, NarHash: *nixhash.MustNewHash(nixhash.SHA256, h.Sum(nil)), NarSize: uint64(n), References: refs}
	u.paths = append(u.paths, p)
	u.names[hash] = name
	u.byName[name] = p
	return p, nil
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

type multiWriter []interface{ Write([]byte) (int, error) }

func (m multiWriter) Write(p []byte) (int, error) {
	for _, w := range m {
		w.Write(p)
	}
	return len(p), nil
}

func (u *universe) Query(ctx context.Context, paths []string) ([]nix.PathInfo, error) {
	var out []nix.PathInfo
	for _, p := range paths {
		info, ok := u.infos[p]
		if !ok {
			return nil, fmt.Errorf("%w: %s", nix.ErrInvalidPath, p)
		}
		out = append(out, info)
	}
	return out, nil
}

func (u *universe) QueryClosure(ctx context.Context, paths []string) ([]nix.PathInfo, error) {
	return u.Query(ctx, u.closure(paths...))
}

// closure lists the closure of roots, references first.
func (u *universe) closure(roots ...string) []string {
	seen := map[string]bool{}
	var out []string
	var visit func(p string)
	visit = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		for _, r := range u.infos[p].References {
			visit(r)
		}
		out = append(out, p)
	}
	for _, r := range roots {
		visit(r)
	}
	return out
}

func (u *universe) name(p string) string { return filepath.Base(p)[33:] }

// randomDAG adds n paths p0…, each referring to up to three earlier ones.
func (u *universe) randomDAG(rng *rand.Rand, n int) error {
	start := len(u.paths)
	for i := range n {
		var refs []string
		if i > 0 {
			for range rng.IntN(4) {
				r := u.paths[start+rng.IntN(i)]
				if !slices.Contains(refs, r) {
					refs = append(refs, r)
				}
			}
		}
		content := bytes.Repeat([]byte(fmt.Sprintf("p%d/%d ", i, rng.Uint32())), 1+rng.IntN(200))
		if _, err := u.add(fmt.Sprintf("p%d", i), content, refs...); err != nil {
			return err
		}
	}
	return nil
}

// job is what a daemon was handed: roots to push (or Ensure), after
// some events, firing one when acknowledged.
type job struct {
	id    string
	kind  string // push, ensure, recheck
	roots []string
	after []string
	done  string
}

// violation is an invariant found broken.
type violation struct {
	step int
	msg  string
}

// harness is one run: one family, one seed.
type harness struct {
	fam  string
	seed uint64
	rng  *rand.Rand
	clk  *realClock
	m    *memBucket
	s    *scheduler
	u    *universe
	key  signature.SecretKey
	comp narpack.Compression

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	live   atomic.Int32

	mu       sync.Mutex
	inFlight map[string]bool            // daemon jobs under way
	writers  map[string]map[string]bool // .narinfo key → jobs that wrote it
	sweeping map[string]bool            // actor → between its marker and its end
	ackRoots map[string]string          // root → job that acknowledged it
	ackPins  map[string]string          // pinned path → pin name
	gaveUp   []string
	events   map[string]chan struct{}
	daemons  []*daemon
	restartP float64
	trace    []string
	first    *violation
	notes    []string
	nars     map[string]string // NAR key → name (short)
}

func newHarness(t testing.TB, fam string, seed uint64) *harness {
	rng := rand.New(rand.NewPCG(seed, uint64(len(fam))<<32|uint64(fam[len(fam)-1])))
	clk := &realClock{}
	h := &harness{fam: fam, seed: seed, rng: rng, clk: clk, m: newMemBucket(clk), u: newUniverse(filepath.Join(t.TempDir(), "store")),
		inFlight: map[string]bool{}, writers: map[string]map[string]bool{}, sweeping: map[string]bool{},
		ackRoots: map[string]string{}, ackPins: map[string]string{}, events: map[string]chan struct{}{}}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	h.s = newScheduler(rng)
	h.s.exec = h.exec
	h.s.faultable = func(o *op) bool { return strings.HasPrefix(o.actor, "d") }
	h.s.trace = h.log
	sk, _, err := signature.GenerateKeypair("interleave-1", rand.NewChaCha8([32]byte{}))
	if err != nil {
		t.Fatal(err)
	}
	h.key = sk
	h.comp = narpack.None
	if rng.IntN(2) == 0 {
		h.comp = narpack.Zstd
	}
	return h
}

// log adds a step's line to the trace.
func (h *harness) log(line string) {
	h.s.mu.Lock()
	step := h.s.step
	h.s.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.flushNotes()
	h.trace = append(h.trace, fmt.Sprintf("%4d %s", step, line))
}

// note adds a line of an actor's between steps (a call returned): those
// of one pause go in the trace sorted, whichever goroutine ran first.
func (h *harness) note(line string) {
	h.s.mu.Lock()
	step := h.s.step
	h.s.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.notes = append(h.notes, fmt.Sprintf("%4d %s", step, line))
}

// flushNotes moves the notes into the trace (the caller holds h.mu).
func (h *harness) flushNotes() {
	slices.Sort(h.notes)
	h.trace = append(h.trace, h.notes...)
	h.notes = h.notes[:0]
}

func (h *harness) event(name string) chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, ok := h.events[name]
	if !ok {
		c = make(chan struct{})
		h.events[name] = c
	}
	return c
}

func (h *harness) fire(name string) {
	if name == "" {
		return
	}
	c := h.event(name)
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-c:
	default:
		close(c)
	}
}

func (h *harness) await(names []string) {
	for _, n := range names {
		select {
		case <-h.event(n):
		case <-h.ctx.Done():
		}
	}
}

// actor runs fn as one of the run's goroutines.
func (h *harness) actor(fn func()) {
	h.live.Add(1)
	h.wg.Go(func() {
		defer h.live.Add(-1)
		fn()
	})
}

// short names an object key after the test path it belongs to.
func (h *harness) short(key string) string {
	switch {
	case strings.Contains(key, ","):
		var parts []string
		for _, k := range strings.Split(key, ",") {
			parts = append(parts, h.short(k))
		}
		return "[" + strings.Join(parts, " ") + "]"
	case strings.HasPrefix(key, layout.RootBatchPrefix):
		return layout.RootBatchPrefix + "*"
	case strings.HasPrefix(key, "nixpush/gc/probe-"):
		return "nixpush/gc/probe-*"
	case strings.HasPrefix(key, "nar/"):
		if n, ok := h.narNames()[key]; ok {
			return "nar(" + n + ")"
		}
	case strings.HasPrefix(key, layout.RootPrefix) && len(key) == len(layout.RootPrefix)+32:
		if n, ok := h.u.names[key[len(layout.RootPrefix):]]; ok {
			return "root(" + n + ")"
		}
	case len(key) > 32 && !strings.Contains(key, "/"):
		if n, ok := h.u.names[key[:32]]; ok {
			return n + key[32:]
		}
	}
	return key
}

// narNames maps each NAR key (either compression) to its path's name.
func (h *harness) narNames() map[string]string {
	if h.nars != nil {
		return h.nars
	}
	m := map[string]string{}
	for p, info := range h.u.infos {
		base := "nar/" + nixbase32.EncodeToString(info.NarHash.Digest()) + ".nar"
		m[base] = h.u.name(p)
		m[base+".zst"] = h.u.name(p)
	}
	h.nars = m
	return m
}

// exec runs a granted request and keeps the books the invariants need:
// who wrote each .narinfo, which sweeps are under way; (b) is checked
// here, before a deletion.
func (h *harness) exec(o *op) error {
	if o.kind == "delete-many" || o.kind == "delete" {
		h.mu.Lock()
		if h.sweeping[o.actor] {
			for other, on := range h.sweeping {
				if on && other != o.actor {
					h.violate(fmt.Sprintf("(b) two sweeps delete at once: %s deletes %s while %s's sweep is under way", o.actor, h.short(o.key), other))
					break
				}
			}
		}
		h.mu.Unlock()
	}
	err := o.run()
	res := result(err)
	if err == nil && o.out != "" {
		res = o.out
	}
	h.log(fmt.Sprintf("%-5s %-8s %-11s %s: %s", o.actor, o.job, o.kind, h.short(o.key), res))
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case (o.kind == "put" || o.kind == "put-if") && strings.HasSuffix(o.key, ".narinfo") && o.job != "":
		if h.writers[o.key] == nil {
			h.writers[o.key] = map[string]bool{}
		}
		h.writers[o.key][o.job] = true
	case (o.kind == "put" || o.kind == "put-if") && o.key == layout.SweepKey:
		var m layout.Sweep
		json.Unmarshal(o.body, &m)
		h.sweeping[o.actor] = m.FinishedAt.IsZero()
	}
	return nil
}

// violate records the first violation (the caller holds h.mu).
func (h *harness) violate(msg string) {
	if h.first == nil {
		h.first = &violation{step: h.s.step - 1, msg: msg}
	}
}

// narinfoFields reads what the invariants need of a .narinfo, whatever
// other lines it carries (Nix ignores those it does not know).
func narinfoFields(data []byte) (url string, refs []string) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ": ")
		switch k {
		case "URL":
			url = v
		case "References":
			refs = strings.Fields(v)
		}
	}
	return url, refs
}

// check looks at the bucket as it is between two steps.
func (h *harness) check(final bool) {
	h.m.mu.Lock()
	objs := maps.Clone(h.m.objs)
	h.m.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.first != nil {
		return
	}
	keys := slices.Sorted(maps.Keys(objs))
	for _, key := range keys {
		if len(key) != 32+len(".narinfo") || !strings.HasSuffix(key, ".narinfo") || strings.Contains(key, "/") {
			continue
		}
		exempt := false
		for j := range h.writers[key] {
			exempt = exempt || h.inFlight[j]
		}
		if exempt && !final {
			continue
		}
		url, refs := narinfoFields(objs[key].data)
		if _, ok := objs[url]; !ok {
			h.violate(fmt.Sprintf("(a) %s lacks its NAR %s%s", h.short(key), h.short(url), h.writtenBy(key)))
			return
		}
		for _, r := range refs {
			if len(r) < 32 || r[:32] == key[:32] {
				continue
			}
			if _, ok := objs[r[:32]+".narinfo"]; !ok {
				h.violate(fmt.Sprintf("(a) %s refers to %s, whose .narinfo is gone%s", h.short(key), h.short(r[:32]+".narinfo"), h.writtenBy(key)))
				return
			}
		}
	}
	for _, root := range slices.Sorted(maps.Keys(h.ackRoots)) {
		if _, ok := objs[layout.NarInfoKey(root)]; !ok {
			h.violate(fmt.Sprintf("(c) root %s, acknowledged by %s, is gone", h.u.name(root), h.ackRoots[root]))
			return
		}
	}
	for _, p := range slices.Sorted(maps.Keys(h.ackPins)) {
		if _, ok := objs[layout.NarInfoKey(p)]; !ok {
			h.violate(fmt.Sprintf("(c) %s, pinned as %s (acknowledged), is gone", h.u.name(p), h.ackPins[p]))
			return
		}
	}
	if final && len(h.gaveUp) > 0 {
		h.violate(fmt.Sprintf("(c) jobs gave up: %s", strings.Join(h.gaveUp, "; ")))
	}
}

func (h *harness) writtenBy(key string) string {
	if len(h.writers[key]) == 0 {
		return " (not written in this run)"
	}
	return " (written by " + strings.Join(slices.Sorted(maps.Keys(h.writers[key])), ", ") + ", acknowledged)"
}

// setupOld pushes the closure of roots (a real push, recording no root)
// and ages everything in the bucket by days: an old cache gc may collect.
func (h *harness) setupOld(roots ...string) error {
	u := uploader.New(uploader.Config{Store: h.m, Nix: h.u, Key: h.key, Compression: h.comp, Jobs: 2, StoreDir: h.u.dir,
		Log: zerolog.Nop(), Host: "setup", Now: h.clk.Now})
	for _, err := range u.Ensure(context.Background(), roots) {
		if err != nil {
			return err
		}
	}
	for _, p := range h.u.closure(roots...) {
		h.u.old[p] = true
	}
	h.m.age(10 * 24 * time.Hour)
	return nil
}

// rewrite changes an object's content, keeping its age.
func (h *harness) rewrite(key string, fn func([]byte) []byte) {
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	o := h.m.objs[key]
	o.data = fn(o.data)
	o.etag = etagOf(o.data)
}

// foreignSig appends a line go-nix's parser rejects (Nix ignores it) to
// p's .narinfo: hole 6.
func (h *harness) foreignSig(p string) {
	h.rewrite(layout.NarInfoKey(p), func(b []byte) []byte { return append(b, "Sig: other-tool:not-ed25519\n"...) })
	h.log("setup: foreign Sig line on " + h.u.name(p))
}

// damage truncates p's NAR: verify reports nar-size, repair sweeps.
func (h *harness) damage(p string) {
	url, _ := narinfoFields(h.m.objs[layout.NarInfoKey(p)].data)
	h.rewrite(url, func(b []byte) []byte { return b[:len(b)/2] })
	h.log("setup: damaged NAR of " + h.u.name(p))
}

// daemon is a nixpush daemon: an Uploader and the jobs its queue hands
// it, each pushed, and retried as Recheck until acknowledged (a failed
// push, a released lease, a restart: all come back as Recheck).
type daemon struct {
	h        *harness
	name     string
	cfg      uploader.Config
	restarts int

	mu     sync.Mutex
	up     *uploader.Uploader
	ctx    context.Context
	cancel context.CancelFunc
	jobs   int // under way
}

// maxAttempts bounds a job's failed attempts, as a harness's guard
// against livelock (the daemon's queue itself never gives a push up: it
// retries with a backoff). Attempts that met a live sweep count apart,
// up to maxLiveAttempts: the daemon waits a sweep out however long it
// lasts, and a sweep starved of the CPU (settles timed out, nothing else
// pending) lets the scheduler grant the waiting job's sleeps back to back.
const (
	maxAttempts     = 60
	maxLiveAttempts = 1000
)

func (h *harness) newDaemon(name string, trust time.Duration) *daemon {
	d := &daemon{h: h, name: name}
	d.cfg = uploader.Config{Store: &gated{m: h.m, s: h.s, actor: name}, Nix: h.u, Key: h.key, Compression: h.comp, Jobs: 2,
		StoreDir: h.u.dir, Log: zerolog.Nop(), TrustCacheFor: trust, Host: name, MaxSweepWait: time.Millisecond, Now: h.clk.Now,
		ClockSkew: 20 * time.Millisecond, PollSweep: time.Millisecond,
		// A wait for a sweep is a backoff step of the scheduler's.
		Sleep: func(ctx context.Context, _ time.Duration) error { h.s.sleep(name, ""); return ctx.Err() }}
	if h.rng.IntN(2) == 0 {
		// Half the daemons wait for a sweep to finish (polling the
		// marker), half give up at once and retry as a Recheck (a
		// restart, a wait limit shorter than the sweep).
		d.cfg.MaxSweepWait = time.Hour
	}
	d.up = uploader.New(d.cfg)
	d.ctx, d.cancel = context.WithCancel(h.ctx)
	h.daemons = append(h.daemons, d)
	return d
}

// restart loses the daemon's memory and interrupts its pushes.
func (d *daemon) restart() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cancel()
	d.ctx, d.cancel = context.WithCancel(d.h.ctx)
	d.up = uploader.New(d.cfg)
	d.restarts--
}

func (d *daemon) current() (*uploader.Uploader, context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.up, d.ctx
}

func (d *daemon) run(jobs ...job) {
	for _, j := range jobs {
		d.h.actor(func() { d.do(j) })
	}
}

func (d *daemon) do(j job) {
	h := d.h
	h.await(j.after)
	if h.ctx.Err() != nil {
		return
	}
	id := d.name + "/" + j.id
	h.mu.Lock()
	h.inFlight[id] = true
	h.mu.Unlock()
	d.mu.Lock()
	d.jobs++
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.jobs--
		d.mu.Unlock()
		h.mu.Lock()
		delete(h.inFlight, id)
		h.mu.Unlock()
		h.fire(j.done)
	}()
	kind, roots := j.kind, j.roots
	live := 0 // attempts that failed only on a live sweep
	for attempt := 1; ; attempt++ {
		up, ctx := d.current()
		ctx = withJob(ctx, id)
		var errs []error
		switch kind {
		case "push":
			errs = up.Push(ctx, roots)
		case "ensure":
			errs = up.Ensure(ctx, roots)
		default:
			errs = up.Recheck(ctx, roots)
		}
		var failed, res []string
		onlyLive := true
		h.mu.Lock()
		for i, r := range roots {
			res = append(res, h.u.name(r)+"="+result(errs[i]))
			if errs[i] != nil {
				failed = append(failed, r)
				onlyLive = onlyLive && result(errs[i]) == resultSweepLive
			} else if kind != "ensure" {
				h.ackRoots[r] = id
			}
		}
		h.mu.Unlock()
		h.note(fmt.Sprintf("%-5s %-8s %s returned: %s", d.name, j.id, kind, strings.Join(res, " ")))
		if len(failed) == 0 || h.ctx.Err() != nil {
			return
		}
		if onlyLive {
			live++
		}
		if attempt-live >= maxAttempts || live >= maxLiveAttempts {
			h.mu.Lock()
			h.gaveUp = append(h.gaveUp, fmt.Sprintf("%s after %d attempts: %s", id, attempt, strings.Join(res, " ")))
			h.mu.Unlock()
			return
		}
		roots = failed
		if kind != "ensure" {
			kind = "recheck"
		}
		h.s.sleep(d.name, j.id)
	}
}

// gc runs retention.GC, again after a refusal (another sweep up).
func (h *harness) gc(name string, after ...string) {
	h.actor(func() {
		h.await(after)
		b := &gated{m: h.m, s: h.s, actor: name}
		for try := 0; try < 4 && h.ctx.Err() == nil; try++ {
			rep, err := retention.GC(h.ctx, b, retention.GCOptions{OlderThan: 30 * 24 * time.Hour, Grace: time.Hour, Window: 10 * time.Minute, Host: name})
			h.mu.Lock()
			h.sweeping[name] = false
			h.mu.Unlock()
			if err == nil {
				h.note(fmt.Sprintf("%-5s gc returned: deleted %d paths, %d NARs", name, len(rep.Deleted.Paths), rep.Deleted.NARs))
				break
			}
			h.note(fmt.Sprintf("%-5s gc returned: %s", name, result(err)))
			if !errors.Is(err, retention.ErrSweepRunning) {
				break
			}
			h.s.sleep(name, "")
		}
		h.fire(name + "-done")
	})
}

// repair runs verify, and repair when verify found something, rounds
// times with a pause between.
func (h *harness) repair(name string, rounds int, after ...string) {
	h.actor(func() {
		h.await(after)
		b := &gated{m: h.m, s: h.s, actor: name}
		for range rounds {
			h.s.sleep(name, "")
			if h.ctx.Err() != nil {
				return
			}
			rep, err := retention.Verify(h.ctx, b, retention.VerifyOptions{Jobs: 2})
			if err != nil {
				h.note(fmt.Sprintf("%-5s verify returned: %s", name, result(err)))
				continue
			}
			var kinds []string
			for _, p := range rep.Problems {
				kinds = append(kinds, h.u.name(p.Path)+":"+p.Kind)
			}
			h.note(fmt.Sprintf("%-5s verify returned: %v", name, kinds))
			if rep.Whole() {
				continue
			}
			out, err := retention.Repair(h.ctx, b, rep, retention.RepairOptions{Host: name, Window: 10 * time.Minute})
			h.mu.Lock()
			h.sweeping[name] = false
			h.mu.Unlock()
			if err != nil {
				h.note(fmt.Sprintf("%-5s repair returned: %s", name, result(err)))
				continue
			}
			var del []string
			for _, p := range out.Deleted {
				del = append(del, h.u.name(p))
			}
			h.note(fmt.Sprintf("%-5s repair returned: deleted %v", name, del))
		}
	})
}

// pin pins p after a few steps of waiting.
func (h *harness) pin(name, p string, waits int) {
	h.actor(func() {
		for range waits {
			h.s.sleep("pin", "")
		}
		b := &gated{m: h.m, s: h.s, actor: "pin"}
		err := retention.AddPinWith(h.ctx, b, name, p, h.clk.Now(), h.clk.Now,
			func(ctx context.Context, _ time.Duration) error { h.s.sleep("pin", ""); return ctx.Err() })
		h.note(fmt.Sprintf("pin   %s %s returned: %s", name, h.u.name(p), result(err)))
		if err == nil {
			h.mu.Lock()
			h.ackPins[p] = name
			h.mu.Unlock()
		}
	})
}

// run schedules the actors until all have returned or an invariant
// broke, and returns the violation (nil: none).
func (h *harness) run() *violation {
	h.narNames() // before any goroutine asks
	stuck := 0
	for {
		h.s.settle()
		h.check(false)
		h.mu.Lock()
		bad := h.first != nil
		h.mu.Unlock()
		if bad {
			break
		}
		if h.live.Load() == 0 {
			h.s.mu.Lock()
			n := len(h.s.pending)
			h.s.mu.Unlock()
			if n == 0 {
				break
			}
		}
		if h.restartP > 0 && h.rng.Float64() < h.restartP {
			for _, d := range h.daemons {
				d.mu.Lock()
				ok := d.jobs > 0 && d.restarts > 0
				d.mu.Unlock()
				if ok {
					h.log(fmt.Sprintf("%-5s RESTART", d.name))
					d.restart()
					break
				}
			}
			continue
		}
		o := h.s.choose()
		if o == nil {
			if stuck++; stuck > 200 {
				h.mu.Lock()
				h.violate("harness: stuck, nothing pending and actors still running")
				h.mu.Unlock()
				break
			}
			time.Sleep(time.Millisecond)
			continue
		}
		stuck = 0
		h.s.grant(o)
	}
	if h.first != nil {
		h.log("---- violation: the rest runs unscheduled and unchecked ----")
		h.cancel()
		h.s.drainAll()
		h.wg.Wait()
		return h.first
	}
	h.wg.Wait()
	h.check(true)
	h.cancel()
	return h.first
}

// families: each a mix aimed at one hole of issue 18.
var families = []struct {
	name, hole string
	build      func(h *harness) error
}{
	{"H1", "re-check after writes lost; the retry's Recheck does not check NARs", buildH1},
	{"H2", "a root or pin written after gc listed is deleted by that gc", buildH2},
	{"H3", "verify --repair during a push", buildH3},
	{"H4", "a forgotten sighting does not force a re-check", buildH4},
	{"H5", "two sweeps at once", buildH5},
	{"H6", "an unreadable .narinfo is kept, its references are not", buildH6},
	{"MIXED", "everything", buildMixed},
}

// strategy draws the scheduler's settings for a run.
func (h *harness) strategy(faultP, restartP float64) {
	s := h.s
	s.eps = []float64{0, 0.1, 0.3, 1}[h.rng.IntN(4)]
	s.pauseP = []float64{0, 0.02, 0.05}[h.rng.IntN(3)]
	for range 1 + h.rng.IntN(5) {
		s.changes[h.rng.IntN(150)] = true
	}
	if h.rng.IntN(2) == 0 {
		s.faultP = faultP
	}
	if h.rng.IntN(2) == 0 {
		h.restartP = restartP
	}
}

// oldAndNew makes a random DAG of n paths and pushes the first k (a
// closed set: references point back) as the old cache.
func (h *harness) oldAndNew(n int) (old, fresh []string, err error) {
	if err := h.u.randomDAG(h.rng, n); err != nil {
		return nil, nil, err
	}
	k := n/3 + h.rng.IntN(n/3)
	if err := h.setupOld(h.u.paths[:k]...); err != nil {
		return nil, nil, err
	}
	return h.u.paths[:k], h.u.paths[k:], nil
}

// overOld are the paths of fresh whose closure holds an old path.
func (h *harness) overOld(fresh []string) []string {
	var out []string
	for _, p := range fresh {
		for _, q := range h.u.closure(p) {
			if h.u.old[q] {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

func pick[T any](rng *rand.Rand, xs []T, n int) []T {
	xs = slices.Clone(xs)
	rng.Shuffle(len(xs), func(i, j int) { xs[i], xs[j] = xs[j], xs[i] })
	return xs[:min(n, len(xs))]
}

func trust(rng *rand.Rand) time.Duration {
	if rng.IntN(2) == 0 {
		return 0
	}
	return 24 * time.Hour
}

func buildH1(h *harness) error {
	_, fresh, err := h.oldAndNew(8 + h.rng.IntN(8))
	if err != nil {
		return err
	}
	over := h.overOld(fresh)
	if len(over) == 0 {
		over = fresh
	}
	roots := pick(h.rng, over, 1+h.rng.IntN(3))
	h.strategy(0.05, 0.03)
	d := h.newDaemon("d1", trust(h.rng))
	// A wait limit shorter than any sweep: the check after writes never
	// finishes, and the retry (a Recheck) must do it.
	d.cfg.MaxSweepWait = time.Millisecond
	d.up = uploader.New(d.cfg)
	d.restarts = 1
	var jobs []job
	for i, r := range roots {
		jobs = append(jobs, job{id: fmt.Sprintf("j%d", i), kind: "push", roots: []string{r}})
	}
	d.run(jobs...)
	h.gc("gc1")
	return nil
}

func buildH2(h *harness) error {
	old, fresh, err := h.oldAndNew(8 + h.rng.IntN(8))
	if err != nil {
		return err
	}
	h.strategy(0.02, 0.02)
	d := h.newDaemon("d1", trust(h.rng))
	d.restarts = 1
	picked := pick(h.rng, old, 3)
	d.run(job{id: "old", kind: "push", roots: picked[:1]}, job{id: "new", kind: "push", roots: pick(h.rng, fresh, 1)})
	if len(picked) > 1 {
		h.pin("keep", picked[len(picked)-1], h.rng.IntN(12))
	}
	h.gc("gc1")
	return nil
}

func buildH3(h *harness) error {
	if _, _, err := h.oldAndNew(6 + h.rng.IntN(6)); err != nil {
		return err
	}
	leaf, err := h.u.add("leaf", []byte("leaf"))
	if err != nil {
		return err
	}
	if err := h.setupOld(leaf); err != nil {
		return err
	}
	mid, _ := h.u.add("mid", []byte("mid"), leaf)
	top, _ := h.u.add("top", []byte("top"), mid)
	h.strategy(0, 0)
	// Long pauses: a push held between two .narinfo writes while gc
	// ends and verify and repair run whole (some fifty steps).
	h.s.pauseP, h.s.pauseMax = []float64{0.02, 0.05, 0.1}[h.rng.IntN(3)], 150
	d := h.newDaemon("d1", trust(h.rng))
	d.run(job{id: "top", kind: "push", roots: []string{top}})
	h.gc("gc1")
	h.repair("rep", 5)
	return nil
}

func buildH4(h *harness) error {
	old, _, err := h.oldAndNew(6 + h.rng.IntN(6))
	if err != nil {
		return err
	}
	r := old[len(old)-1]
	s, _ := h.u.add("s", []byte("s"))
	refs := []string{r, s} // the order that hides the forgotten sighting
	if h.seed%2 == 1 {
		refs = []string{s, r}
	}
	top, _ := h.u.add("top", []byte("top"), refs...)
	h.log(fmt.Sprintf("setup: top refers to %s, %s", h.u.name(refs[0]), h.u.name(refs[1])))
	h.strategy(0, 0)
	d1 := h.newDaemon("d1", 24*time.Hour)
	d1.run(
		job{id: "seer", kind: "ensure", roots: []string{r}, done: "seen"},
		job{id: "s", kind: "push", roots: []string{s}, after: []string{"later"}, done: "s-in"},
		job{id: "top", kind: "push", roots: []string{top}, after: []string{"s-in"}},
		job{id: "re-r", kind: "recheck", roots: []string{r}, after: []string{"s-in"}},
	)
	d2 := h.newDaemon("d2", 24*time.Hour)
	d2.run(job{id: "any", kind: "push", roots: pick(h.rng, h.u.paths, 1), after: []string{"later"}})
	h.gc("gc1", "seen")
	// Minutes pass after the sweep (no gc runs again): the daemons'
	// sightings are after its finished_at plus the skew margin.
	h.actor(func() {
		h.await([]string{"gc1-done"})
		h.clk.Advance(2 * time.Minute)
		h.note("clock: +2m")
		h.fire("later")
	})
	return nil
}

func buildH5(h *harness) error {
	_, fresh, err := h.oldAndNew(8 + h.rng.IntN(8))
	if err != nil {
		return err
	}
	dmg, _ := h.u.add("dmg", []byte("damaged"))
	if err := h.setupOld(dmg); err != nil {
		return err
	}
	h.damage(dmg)
	putPin(h, "keep-dmg", dmg)
	h.strategy(0.02, 0.02)
	d := h.newDaemon("d1", trust(h.rng))
	d.run(job{id: "j0", kind: "push", roots: pick(h.rng, fresh, 2)})
	h.gc("gc1")
	if h.rng.IntN(3) > 0 {
		h.gc("gc2")
	} else {
		h.repair("rep", 2)
	}
	return nil
}

// putPin writes a pin at setup, aged with the rest.
func putPin(h *harness, name, p string) {
	data, _ := json.Marshal(layout.Pin{Path: p, PinnedAt: h.clk.Now().Add(-10 * 24 * time.Hour)})
	h.m.mu.Lock()
	h.m.put(layout.PinPrefix+name, data)
	h.m.mu.Unlock()
}

func buildH6(h *harness) error {
	old, fresh, err := h.oldAndNew(8 + h.rng.IntN(8))
	if err != nil {
		return err
	}
	var withRefs []string
	for _, p := range old {
		if len(h.u.infos[p].References) > 0 {
			withRefs = append(withRefs, p)
		}
	}
	if len(withRefs) == 0 {
		withRefs = old
	}
	h.foreignSig(pick(h.rng, withRefs, 1)[0])
	h.strategy(0, 0)
	d := h.newDaemon("d1", trust(h.rng))
	d.run(job{id: "j0", kind: "push", roots: pick(h.rng, fresh, 1)})
	h.gc("gc1")
	return nil
}

func buildMixed(h *harness) error {
	old, fresh, err := h.oldAndNew(10 + h.rng.IntN(10))
	if err != nil {
		return err
	}
	if h.rng.IntN(2) == 0 {
		h.foreignSig(pick(h.rng, old, 1)[0])
	}
	if h.rng.IntN(2) == 0 {
		dmg, _ := h.u.add("dmg", []byte("damaged"))
		if err := h.setupOld(dmg); err != nil {
			return err
		}
		h.damage(dmg)
		putPin(h, "keep-dmg", dmg)
	}
	h.strategy(0.03, 0.02)
	for i := range 2 {
		d := h.newDaemon(fmt.Sprintf("d%d", i+1), trust(h.rng))
		d.restarts = 1
		var jobs []job
		for j, r := range pick(h.rng, append(slices.Clone(fresh), pick(h.rng, old, 2)...), 1+h.rng.IntN(3)) {
			jobs = append(jobs, job{id: fmt.Sprintf("j%d", j), kind: "push", roots: []string{r}})
		}
		d.run(jobs...)
	}
	h.gc("gc1")
	if h.rng.IntN(2) == 0 {
		h.gc("gc2")
	}
	if h.rng.IntN(2) == 0 {
		h.repair("rep", 2)
	}
	h.pin("keep", pick(h.rng, old, 1)[0], h.rng.IntN(20))
	return nil
}

// outcome is one run's result.
type outcome struct {
	v         *violation
	steps     int
	unsettled int
	hash      string
	trace     []string
}

func runOne(t testing.TB, fam string, build func(*harness) error, seed uint64) outcome {
	h := newHarness(t, fam, seed)
	if err := build(h); err != nil {
		t.Fatalf("%s:%d: setup: %v", fam, seed, err)
	}
	v := h.run()
	h.mu.Lock()
	h.flushNotes()
	h.mu.Unlock()
	sum := sha256.Sum256([]byte(strings.Join(h.trace, "\n")))
	if dir := os.Getenv("NIXPUSH_INTERLEAVE_DUMP"); dir != "" {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%d-%x.trace", fam, seed, sum[:4])), []byte(strings.Join(h.trace, "\n")+"\n"), 0o644)
	}
	return outcome{v: v, steps: h.s.step, unsettled: h.s.unsettled, hash: hex.EncodeToString(sum[:8]), trace: h.trace}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func TestInterleavings(t *testing.T) {
	seeds := envInt("NIXPUSH_INTERLEAVE_SEEDS", 100)
	keepGoing := os.Getenv("NIXPUSH_INTERLEAVE_KEEPGOING") != ""
	want := map[string]bool{}
	for _, f := range strings.Split(os.Getenv("NIXPUSH_INTERLEAVE_FAMILIES"), ",") {
		if f != "" {
			want[f] = true
		}
	}
	replay := map[string][]uint64{}
	if r := os.Getenv("NIXPUSH_INTERLEAVE_SEED"); r != "" {
		for _, item := range strings.Fields(strings.ReplaceAll(r, ";", " ")) {
			fam, list, _ := strings.Cut(item, ":")
			for _, s := range strings.Split(list, ",") {
				n, err := strconv.ParseUint(s, 10, 64)
				if err != nil {
					t.Fatalf("NIXPUSH_INTERLEAVE_SEED=%s: want family:seed[,seed...]", r)
				}
				replay[fam] = append(replay[fam], n)
			}
		}
	}
	for _, f := range families {
		if len(want) > 0 && !want[f.name] || len(replay) > 0 && replay[f.name] == nil {
			continue
		}
		t.Run(f.name, func(t *testing.T) {
			list := replay[f.name]
			if list == nil {
				for s := range uint64(seeds) {
					list = append(list, s)
				}
			}
			start := time.Now()
			steps, runs, unsettled := 0, 0, 0
			var failing []string
			if n := envInt("NIXPUSH_INTERLEAVE_REPEAT", 0); n > 0 {
				// Reproducibility: the same seed n times, traces compared.
				for _, seed := range list {
					hashes, verdicts := map[string]int{}, map[string]int{}
					for range n {
						o := runOne(t, f.name, f.build, seed)
						hashes[o.hash]++
						v := "pass"
						if o.v != nil {
							v = o.v.msg
						}
						verdicts[v]++
					}
					t.Logf("%s:%d run %d times: %d distinct traces %v; verdicts: %v", f.name, seed, n, len(hashes), hashes, verdicts)
				}
				return
			}
			for _, seed := range list {
				o := runOne(t, f.name, f.build, seed)
				steps += o.steps
				unsettled += o.unsettled
				runs++
				if len(replay) > 0 {
					t.Logf("%s:%d: %d steps, trace %s:\n%s", f.name, seed, o.steps, o.hash, strings.Join(o.trace, "\n"))
				}
				if o.v == nil {
					continue
				}
				failing = append(failing, fmt.Sprintf("%d", seed))
				tail := o.trace[max(0, len(o.trace)-40):]
				t.Errorf("%s:%d (hole: %s): after step %d: %s\nreplay: NIXPUSH_INTERLEAVE_SEED=%s:%d\ntrace tail:\n%s",
					f.name, seed, f.hole, o.v.step, o.v.msg, f.name, seed, strings.Join(tail, "\n"))
				if !keepGoing {
					break
				}
			}
			d := time.Since(start)
			t.Logf("%s: %d seeds, %d steps (%.0f a run), %.1f seeds/s, %d settles timed out; failing seeds: %v", f.name, runs, steps,
				float64(steps)/float64(max(runs, 1)), float64(runs)/d.Seconds(), unsettled, failing)
		})
	}
}
