package retention_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nixpush/nixpush/store"
)

// op is one request of one actor, waiting at the gate for its grant.
type op struct {
	actor, job, kind, key string
	body                  []byte
	run                   func() error // nil: a backoff (sleep) step
	out                   string       // what the step found, for the trace
	ctx                   context.Context
	res                   chan error
	regStep               int
	taken                 bool
}

func (o *op) sortKey() string { return o.actor + "\x00" + o.job + "\x00" + o.kind + "\x00" + o.key }

// errInjected is the transient store error the scheduler injects.
var errInjected = errors.New("injected: store unavailable (transient)")

// scheduler grants one request at a time, chosen by a seeded PCG among
// those pending once every goroutine has settled, and lets the harness
// check the bucket after each step.
type scheduler struct {
	rng *rand.Rand

	mu       sync.Mutex
	pending  []*op
	activity uint64 // registrations and withdrawals
	step     int
	drain    bool // after a violation: grant everything, check nothing

	// strategy: actor priorities (PCT), change points, pauses
	prio      map[string]int
	changes   map[int]bool
	paused    map[string]int // actor → step until which it waits
	eps       float64
	pauseP    float64
	pauseMax  int // steps
	faultP    float64
	sleepGap  int // a backoff step is granted after this many other steps
	unsettled int // settles that timed out
	samples   []metrics.Sample

	// exec runs a granted request on the bucket and records it (the
	// harness's bookkeeping and step checks); faultable says whether a
	// request may get an injected error.
	exec      func(o *op) error
	faultable func(o *op) bool
	trace     func(line string)
}

func newScheduler(rng *rand.Rand) *scheduler {
	s := &scheduler{rng: rng, prio: map[string]int{}, changes: map[int]bool{}, paused: map[string]int{}, sleepGap: 8, pauseMax: 40,
		samples: []metrics.Sample{
			{Name: "/sched/goroutines/running:goroutines"},
			{Name: "/sched/goroutines/runnable:goroutines"},
			{Name: "/sched/goroutines/not-in-go:goroutines"},
		}}
	return s
}

// gate registers o and blocks until the scheduler has run it.
func (s *scheduler) gate(ctx context.Context, o *op) error {
	if err := ctx.Err(); err != nil {
		return err // a request with a cancelled context never leaves
	}
	o.ctx = ctx
	o.res = make(chan error, 1)
	s.mu.Lock()
	if s.drain {
		s.mu.Unlock()
		if o.run == nil {
			return nil
		}
		return s.exec(o)
	}
	o.regStep = s.step
	s.pending = append(s.pending, o)
	s.activity++
	s.mu.Unlock()
	select {
	case err := <-o.res:
		return err
	case <-ctx.Done():
		s.mu.Lock()
		if !o.taken {
			s.pending = slices.DeleteFunc(s.pending, func(x *op) bool { return x == o })
			s.activity++
			s.mu.Unlock()
			return ctx.Err()
		}
		s.mu.Unlock()
		return <-o.res
	}
}

// sleep is a backoff of an actor: a step of its own, granted only after
// some others (or when nothing else is pending).
func (s *scheduler) sleep(actor, job string) {
	s.gate(context.Background(), &op{actor: actor, job: job, kind: "sleep"})
}

// settle waits until no goroutine of the process runs and none has
// registered or withdrawn a request for a while: everything that can
// move without a grant has moved.
func (s *scheduler) settle() {
	deadline := time.Now().Add(100 * time.Millisecond)
	s.mu.Lock()
	last := s.activity
	s.mu.Unlock()
	stable := 0.0
	for stable < 4 {
		// Yield for a while rather than sleep: a timer's sleep is a
		// millisecond here, and a run has hundreds of steps.
		for t0 := time.Now(); time.Since(t0) < 50*time.Microsecond; {
			runtime.Gosched()
		}
		metrics.Read(s.samples)
		running, runnable, out := s.samples[0].Value.Uint64(), s.samples[1].Value.Uint64(), s.samples[2].Value.Uint64()
		s.mu.Lock()
		a := s.activity
		s.mu.Unlock()
		switch {
		case a != last || runnable > 0 || out > 0 || running > 2:
			stable, last = 0, a
		case running == 2:
			// Another goroutine running: the runtime's (a GC worker)
			// or ours; settled only if that lasts with nothing new.
			stable += 0.05
		default:
			stable++
		}
		if time.Now().After(deadline) {
			s.unsettled++
			return
		}
	}
}

// choose picks the next request to grant, or nil when none is pending.
func (s *scheduler) choose() *op {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) == 0 {
		return nil
	}
	slices.SortStableFunc(s.pending, func(a, b *op) int { return strings.Compare(a.sortKey(), b.sortKey()) })
	var elig []*op
	for _, o := range s.pending {
		if o.run == nil && s.step-o.regStep < s.sleepGap {
			continue
		}
		if s.paused[o.actor] > s.step {
			continue
		}
		elig = append(elig, o)
	}
	if len(elig) == 0 {
		elig = s.pending
	}
	var pick *op
	if s.rng.Float64() < s.eps {
		pick = elig[s.rng.IntN(len(elig))]
	} else {
		best := -1 << 30
		for _, o := range elig {
			if p := s.priority(o.actor); p > best {
				best = p
			}
		}
		var mine []*op
		for _, o := range elig {
			if s.priority(o.actor) == best {
				mine = append(mine, o)
			}
		}
		pick = mine[s.rng.IntN(len(mine))]
	}
	if s.changes[s.step] { // PCT: the running actor drops to the bottom
		low := 0
		for _, p := range s.prio {
			low = min(low, p)
		}
		s.prio[pick.actor] = low - 1
	}
	if s.rng.Float64() < s.pauseP {
		s.paused[pick.actor] = s.step + 1 + s.rng.IntN(s.pauseMax)
	}
	s.pending = slices.DeleteFunc(s.pending, func(x *op) bool { return x == pick })
	pick.taken = true
	s.activity++
	return pick
}

func (s *scheduler) priority(actor string) int {
	p, ok := s.prio[actor]
	if !ok {
		p = s.rng.IntN(1000)
		s.prio[actor] = p
	}
	return p
}

// grant runs o (or fails it: a cancelled context, an injected fault).
func (s *scheduler) grant(o *op) {
	var err error
	switch {
	case o.run == nil:
		s.trace(fmt.Sprintf("%-5s %-8s sleep", o.actor, o.job))
	case o.ctx.Err() != nil:
		err = o.ctx.Err()
		s.trace(fmt.Sprintf("%-5s %-8s %-11s %s: cancelled", o.actor, o.job, o.kind, o.key))
	case s.faultP > 0 && s.faultable(o) && s.rng.Float64() < s.faultP:
		err = fmt.Errorf("%s %s: %w", o.kind, o.key, errInjected)
		s.trace(fmt.Sprintf("%-5s %-8s %-11s %s: FAULT", o.actor, o.job, o.kind, o.key))
	default:
		err = s.exec(o)
	}
	s.mu.Lock()
	s.step++
	s.mu.Unlock()
	o.res <- err
}

// drainAll stops scheduling: everything pending and to come runs at
// once, unchecked (after a violation, to let the actors end).
func (s *scheduler) drainAll() {
	s.mu.Lock()
	s.drain = true
	p := s.pending
	s.pending = nil
	s.mu.Unlock()
	for _, o := range p {
		o.taken = true
		if o.run == nil {
			o.res <- nil
			continue
		}
		o.res <- s.exec(o)
	}
}

// resultSweepLive names a push's error that a live sweep may still delete
// what it relied on: the daemon retries.
const resultSweepLive = "sweep-live (will retry)"

// result is how a trace line names an error: without times or randomness.
func result(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, store.ErrNotExist):
		return "absent"
	case errors.Is(err, store.ErrConditionFailed):
		return "condition-failed"
	case errors.Is(err, errInjected):
		return "fault"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case strings.Contains(err.Error(), "may delete until"):
		return resultSweepLive
	}
	msg := err.Error()
	if len(msg) > 90 {
		msg = msg[:90] + "…"
	}
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return '#'
		}
		return r
	}, msg)
}
