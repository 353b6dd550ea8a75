package store

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
)

// A store that is overloaded says so: S3 answers 503 SlowDown, others 429
// Too Many Requests, some with Retry-After. minio-go retries such answers
// itself (ten times, each request after its own backoff of 200 ms
// doubling to 1 s, full jitter), ignoring Retry-After, so on its own the
// daemon would never learn of them. The gate below sits in the S3
// client's transport, under minio-go: it sees every answer, and it is the
// one place every request to the store passes. It keeps an adaptive limit
// on requests in flight (additive increase on success, multiplicative
// decrease on a throttling answer): that is the global slowing.
//
// The waiting is per request: a throttled request waits the Retry-After
// it was given (else minio-go's backoff) before its retry goes out, and
// after minio-go gives up, persist waits a backoff of its own (250 ms
// doubling to 8 s, jittered) before the next round of tries. Requests
// that were not throttled are not held back: a store throttles a share
// of the requests (S3 per key prefix), and a pause of every request
// after any throttled one left the line idle for most of a push (see
// docs/throttling.md for the figures). Throttling slows paths down, it
// never fails them.

const (
	// maxInFlight bounds the limit: the transport keeps as many idle
	// connections, and nothing in the uploader asks for more at once.
	maxInFlight = 64
	// throttleBackoff is persist's first wait before a new round of tries
	// of an operation minio-go gave up on as throttled; it doubles with
	// each further round, up to throttleBackoffMax.
	throttleBackoff    = 250 * time.Millisecond
	throttleBackoffMax = 8 * time.Second
	// maxRetryAfter bounds the wait a store may ask for.
	maxRetryAfter = 5 * time.Minute
	// cutEvery: throttling answers within it cut the limit once (they
	// answer the same overload: requests sent before the first cut).
	cutEvery = time.Second
	// throttlingFor is how long after the last throttling answer the
	// store is said to be throttling.
	throttlingFor = time.Minute
)

// Traffic is what the daemon's requests to its store look like now.
type Traffic struct {
	// Throttling: the store answered 503/429 within the last minute.
	Throttling bool
	// Throttled counts throttling answers (503 SlowDown, 429) since start.
	Throttled     int64
	LastThrottled time.Time
	// Concurrency is the limit on requests in flight now; it falls on
	// throttling and climbs back as requests succeed, up to MaxConcurrency.
	Concurrency    int
	MaxConcurrency int
	InFlight       int
	// RateCap is the upload cap in force now in bytes a second (0: none);
	// Rate is the bytes sent to the store a second over the last seconds.
	RateCap int64
	Rate    float64
	// RateCapNext is when the cap next changes by its schedule, to
	// RateCapNextRate (zero: it never does); RateSchedule is the schedule
	// ("" when the cap has no windows).
	RateCapNext     time.Time
	RateCapNextRate int64
	RateSchedule    string
	// Sent counts request body bytes sent since start.
	Sent int64
}

// gate is the adaptive limit on requests in flight to one store.
type gate struct {
	now func() time.Time

	mu        sync.Mutex
	limit     float64
	max       float64
	inFlight  int
	wake      chan struct{} // closed and replaced when a slot may be free
	cutGap    time.Duration // cutEvery (tests shorten it)
	lastCut   time.Time
	lastThrot time.Time
	throttled int64
}

func newGate(max int, now func() time.Time) *gate {
	if now == nil {
		now = time.Now
	}
	return &gate{now: now, limit: float64(max), max: float64(max), wake: make(chan struct{}), cutGap: cutEvery}
}

// acquire waits for a slot: fewer requests than the limit in flight.
func (g *gate) acquire(ctx context.Context) error {
	for {
		g.mu.Lock()
		if g.inFlight < max(1, int(g.limit)) {
			g.inFlight++
			g.mu.Unlock()
			return nil
		}
		wake := g.wake
		g.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// outcome is how a request through the gate ended.
type outcome int

const (
	succeeded outcome = iota // an answer other than throttling
	failed                   // no answer (network, cancelled): the limit stays
	throttled                // 503 or 429
)

// release frees the slot and adapts the limit: +1/limit per success (one
// more request in flight per round of them), halved on throttling (from
// what was in flight, if that was less than the limit), at most once per
// cutEvery. Nobody else waits: the throttled request's own retry does.
func (g *gate) release(o outcome) {
	g.mu.Lock()
	defer g.mu.Unlock()
	inFlight := g.inFlight
	g.inFlight--
	close(g.wake)
	g.wake = make(chan struct{})
	now := g.now()
	switch o {
	case succeeded:
		g.limit = min(g.max, g.limit+1/g.limit)
	case throttled:
		g.throttled++
		g.lastThrot = now
		if now.Sub(g.lastCut) >= g.cutGap {
			g.limit = max(1, min(g.limit, float64(inFlight))/2)
			g.lastCut = now
		}
	}
}

func (g *gate) traffic(t *Traffic) {
	g.mu.Lock()
	defer g.mu.Unlock()
	t.Throttled, t.LastThrottled = g.throttled, g.lastThrot
	t.Throttling = g.throttled > 0 && g.now().Sub(g.lastThrot) < throttlingFor
	t.Concurrency, t.MaxConcurrency, t.InFlight = max(1, int(g.limit)), int(g.max), g.inFlight
}

// isThrottling tells a throttling answer: 429, or 503 (S3's SlowDown;
// a 503 of any other kind asks for the same: fewer requests, later).
func isThrottling(status int) bool {
	return status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable
}

// retryAfter reads Retry-After: seconds, or an HTTP date (0: none).
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		return time.Duration(max(s, 0)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0)
	}
	return 0
}

// storeTransport is the S3 client's transport: every request passes the
// gate, and its body the bandwidth cap.
type storeTransport struct {
	next  http.RoundTripper
	gate  *gate
	bw    *bandwidth
	sleep func(context.Context, time.Duration) error // Sleep (tests shorten it)
}

func (t *storeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := t.gate.acquire(req.Context()); err != nil {
		if req.Body != nil {
			req.Body.Close() // a RoundTripper closes the body, even on errors
		}
		return nil, err
	}
	var body io.ReadCloser
	if req.Body != nil && req.Body != http.NoBody {
		r := *req // a RoundTripper must not change the caller's request
		body = t.bw.body(req.Context(), req.Body)
		r.Body = body
		req = &r
	}
	resp, err := t.next.RoundTrip(req)
	if body != nil && err == nil {
		t.bw.answered(body)
	}
	// The slot is freed once the answer's head is in: request bodies are
	// sent by then, and the bodies of answers the store sends are small.
	switch {
	case err != nil:
		t.gate.release(failed)
	case isThrottling(resp.StatusCode):
		t.gate.release(throttled)
		// The store said when to come back: this request's retry waits
		// for it (minio-go's own wait comes on top, at most 1 s); the
		// others go on under the limit just cut.
		if wait := min(retryAfter(resp.Header, t.gate.now()), maxRetryAfter); wait > 0 {
			if serr := t.sleep(req.Context(), wait); serr != nil {
				resp.Body.Close()
				return nil, serr
			}
		}
	default:
		t.gate.release(succeeded)
	}
	return resp, err
}

// throttlingError tells an S3 error that is the store asking for fewer
// requests: minio-go gave up retrying it.
func throttlingError(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	resp := minio.ToErrorResponse(err)
	switch resp.Code {
	case "SlowDown", "SlowDownWrite", "SlowDownRead", "TooManyRequests", "RequestLimitExceeded", "Throttling":
		return true
	}
	return isThrottling(resp.StatusCode)
}

// persist runs op until it ends otherwise than throttled: throttling is
// never a failure of what is being uploaded, only a reason to wait. op's
// requests are retried by minio-go, each after its own backoff (and a
// Retry-After, see storeTransport); when minio-go gives up, persist waits
// backoff (250 ms doubling to 8 s, the upper half jittered) and runs op
// again. body, when not nil, is rewound before each new attempt; a body
// that cannot be rewound gets no second attempt.
func persist(ctx context.Context, body io.Reader, op func() error) error {
	backoff := throttleBackoff
	for {
		err := op()
		if !throttlingError(err) || ctx.Err() != nil {
			return err
		}
		if body != nil {
			s, ok := body.(io.Seeker)
			if !ok {
				return err
			}
			if _, serr := s.Seek(0, io.SeekStart); serr != nil {
				return err
			}
		}
		if serr := Sleep(ctx, backoff/2+rand.N(backoff/2+1)); serr != nil {
			return err
		}
		backoff = min(2*backoff, throttleBackoffMax)
	}
}
