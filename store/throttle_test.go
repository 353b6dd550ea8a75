package store

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// TestGateAIMD drives the gate by hand: throttling halves the limit (from
// what was in flight), once per cutEvery; successes add one per round.
func TestGateAIMD(t *testing.T) {
	now := time.Unix(1000, 0)
	g := newGate(16, func() time.Time { return now })
	ctx := context.Background()
	for range 8 {
		if err := g.acquire(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// 8 in flight under a limit of 16: the cut starts from the 8.
	g.release(throttled)
	var tr Traffic
	g.traffic(&tr)
	if tr.Concurrency != 4 || !tr.Throttling || tr.Throttled != 1 {
		t.Fatalf("after a throttling answer with 8 in flight: %+v; want concurrency 4, throttling", tr)
	}
	// More answers to the same overload: no further cut.
	g.release(throttled)
	g.traffic(&tr)
	if tr.Concurrency != 4 || tr.Throttled != 2 {
		t.Errorf("second answer within cutEvery: %+v; want concurrency 4, 2 counted", tr)
	}
	// A second later: cut again.
	now = now.Add(cutEvery)
	g.release(throttled)
	g.traffic(&tr)
	if tr.Concurrency != 2 || tr.InFlight != 5 {
		t.Errorf("a second later: %+v; want concurrency 2, 5 in flight", tr)
	}
	// Successes: the limit climbs back by about one per round of requests.
	for range 5 {
		g.release(succeeded)
	}
	g.traffic(&tr)
	if tr.Concurrency != 3 || tr.InFlight != 0 {
		t.Errorf("after 5 successes from 2: %+v; want concurrency 3", tr)
	}
	for range 200 {
		g.inFlight++
		g.release(succeeded)
	}
	g.traffic(&tr)
	if tr.Concurrency != 16 {
		t.Errorf("after 200 more successes: concurrency %d; want the maximum 16", tr.Concurrency)
	}
	now = now.Add(throttlingFor)
	g.traffic(&tr)
	if tr.Throttling {
		t.Errorf("a minute after the last throttling answer: still throttling")
	}
}

// TestRetryAfter reads the header: seconds, an HTTP date, nothing.
func TestRetryAfter(t *testing.T) {
	now := time.Unix(1000, 0)
	for _, tc := range []struct {
		name, value string
		want        time.Duration
	}{
		{"seconds", "3", 3 * time.Second},
		{"a date 90 s ahead", now.Add(90 * time.Second).UTC().Format(http.TimeFormat), 90 * time.Second},
		{"a date past", now.Add(-time.Minute).UTC().Format(http.TimeFormat), 0},
		{"none", "", 0},
		{"garbage", "soon", 0},
	} {
		h := http.Header{}
		if tc.value != "" {
			h.Set("Retry-After", tc.value)
		}
		if got := retryAfter(h, now); got != tc.want {
			t.Errorf("%s: Retry-After %q: %v; want %v", tc.name, tc.value, got, tc.want)
		}
	}
}

// TestGateAcquireWaits: a full gate holds a request until a slot frees, and
// a cancelled context ends the wait; a throttling answer holds nobody.
func TestGateAcquireWaits(t *testing.T) {
	g := newGate(2, nil)
	ctx := context.Background()
	if err := g.acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.acquire(ctx); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- g.acquire(ctx) }()
	select {
	case <-got:
		t.Fatal("a third request went out past a limit of 2")
	case <-time.After(50 * time.Millisecond):
	}
	g.release(succeeded)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	// Two in flight, limit 2: a throttling answer cuts the limit to 1 and
	// frees its slot; with one still in flight, the next waits for it.
	g.release(throttled)
	go func() { got <- g.acquire(ctx) }()
	select {
	case <-got:
		t.Fatal("a request went out past the limit cut to 1")
	case <-time.After(50 * time.Millisecond):
	}
	g.release(succeeded)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	// The success raised the limit to 2 again: one more fills it.
	if err := g.acquire(ctx); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := g.acquire(cctx); err == nil {
		t.Error("acquire past a full gate with a context that ended")
	}
}

// TestRetryAfterHoldsOnlyItsRequest: a store that answers one request 429
// with Retry-After: 1 holds that request's retry for the second asked,
// while the requests beside it go on (the old gate paused them all).
func TestRetryAfterHoldsOnlyItsRequest(t *testing.T) {
	var slept atomic.Int64
	var first atomic.Bool
	next := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		resp := &http.Response{StatusCode: 200, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("")), Request: req}
		if req.URL.Path == "/throttled" && first.CompareAndSwap(false, true) {
			resp.StatusCode = http.StatusTooManyRequests
			resp.Header.Set("Retry-After", "1")
		}
		return resp, nil
	})
	tr := &storeTransport{next: next, gate: newGate(8, nil), bw: newBandwidth(RateSchedule{}, nil, nil),
		sleep: func(ctx context.Context, d time.Duration) error {
			slept.Add(int64(d))
			return Sleep(ctx, 200*time.Millisecond)
		}}
	throttledDone := make(chan time.Time, 1)
	start := time.Now()
	go func() {
		req, _ := http.NewRequest(http.MethodGet, "http://s3.test/throttled", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil || resp.StatusCode != http.StatusTooManyRequests {
			t.Errorf("throttled request: %v, %v", resp, err)
		}
		throttledDone <- time.Now()
	}()
	time.Sleep(20 * time.Millisecond)
	for i := range 20 {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://s3.test/other-%d", i), nil)
		if _, err := tr.RoundTrip(req); err != nil {
			t.Fatal(err)
		}
	}
	others := time.Since(start)
	done := <-throttledDone
	if time.Duration(slept.Load()) != time.Second {
		t.Errorf("the throttled request waited %v; want the Retry-After, 1s", time.Duration(slept.Load()))
	}
	if others >= done.Sub(start) {
		t.Errorf("20 other requests took %v, past the throttled request's wait (%v): they were held back", others, done.Sub(start))
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// fakeS3 answers minio-go's requests without a network: a PUT is stored,
// a HEAD finds it; an answer chosen by throttle is a 503 SlowDown instead.
type fakeS3 struct {
	mu       sync.Mutex
	objects  map[string][]byte
	requests int
	throttle func(n int) bool // the n-th request (from 0) is throttled
	gate     *gate
	limits   []int // the gate's limit at each request
	inFlight atomic.Int32
	maxSeen  atomic.Int32
}

func (f *fakeS3) RoundTrip(req *http.Request) (*http.Response, error) {
	cur := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		m := f.maxSeen.Load()
		if cur <= m || f.maxSeen.CompareAndSwap(m, cur) {
			break
		}
	}
	var body []byte
	if req.Body != nil {
		body, _ = io.ReadAll(req.Body)
		req.Body.Close()
	}
	time.Sleep(time.Millisecond) // requests overlap
	f.mu.Lock()
	n := f.requests
	f.requests++
	var tr Traffic
	f.gate.traffic(&tr)
	f.limits = append(f.limits, tr.Concurrency)
	throttled := f.throttle(n)
	if !throttled && req.Method == http.MethodPut {
		f.objects[req.URL.Path] = body
	}
	obj, ok := f.objects[req.URL.Path]
	f.mu.Unlock()
	resp := &http.Response{StatusCode: 200, Header: http.Header{}, Request: req, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
	switch {
	case throttled:
		text := `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`
		resp.StatusCode = http.StatusServiceUnavailable
		resp.Header.Set("Content-Type", "application/xml")
		resp.Body = io.NopCloser(strings.NewReader(text))
		resp.ContentLength = int64(len(text))
		return resp, nil
	case req.Method == http.MethodHead && !ok:
		resp.StatusCode = http.StatusNotFound
	case req.Method == http.MethodHead:
		resp.ContentLength = int64(len(obj))
		resp.Header.Set("Content-Length", fmt.Sprint(len(obj)))
		resp.Header.Set("Last-Modified", time.Now().UTC().Format(http.TimeFormat))
	}
	resp.Header.Set("ETag", `"0123456789abcdef0123456789abcdef"`)
	resp.Body = io.NopCloser(bytes.NewReader(nil))
	return resp, nil
}

// fakeS3Store is an S3Store whose requests go to f, through the gate as
// the daemon's do.
func fakeS3Store(t *testing.T, f *fakeS3) *S3Store {
	t.Helper()
	// minio-go's own retry waits, shortened: the gate's are what is tested.
	unit, cap := minio.DefaultRetryUnit, minio.DefaultRetryCap
	minio.DefaultRetryUnit, minio.DefaultRetryCap = time.Millisecond, 5*time.Millisecond
	t.Cleanup(func() { minio.DefaultRetryUnit, minio.DefaultRetryCap = unit, cap })
	g := newGate(maxInFlight, nil)
	g.cutGap = 5 * time.Millisecond // the fake answers in milliseconds what S3 does in a second
	f.gate, f.objects = g, map[string][]byte{}
	tr := &storeTransport{next: f, gate: g, bw: newBandwidth(RateSchedule{}, nil, nil), sleep: Sleep}
	client, err := minio.New("s3.test:9000", &minio.Options{Creds: credentials.NewStaticV4("k", "secret-key", ""),
		Region: "us-east-1", Transport: tr, BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	return &S3Store{client: client, probe: client, bucket: "bkt", name: "fake", gate: g, bw: tr.bw}
}

// TestThrottlingIsNotFailure: with a third of the first 300 answers 503
// SlowDown and a run of 25 in a row (more than minio-go's ten tries), every Put and Has
// succeeds; the gate saw the answers, cut the concurrency and let it climb
// back.
func TestThrottlingIsNotFailure(t *testing.T) {
	f := &fakeS3{throttle: func(n int) bool { return (n < 300 && n%3 == 0) || (n >= 100 && n < 125) }}
	s := fakeS3Store(t, f)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for i := range 200 {
		wg.Go(func() {
			key := fmt.Sprintf("k%03d", i)
			data := strings.Repeat("x", 100+i)
			if err := s.Put(ctx, key, strings.NewReader(data), int64(len(data)), "text/plain"); err != nil {
				errs <- fmt.Errorf("put %s: %w", key, err)
				return
			}
			if has, err := s.Has(ctx, key); err != nil || !has {
				errs <- fmt.Errorf("has %s: %v, %v", key, has, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range 200 {
		if v := f.objects["/bkt/"+fmt.Sprintf("k%03d", i)]; len(v) != 100+i {
			t.Errorf("k%03d: %d bytes stored; want %d", i, len(v), 100+i)
		}
	}
	tr := s.Traffic()
	lo := tr.MaxConcurrency
	for _, l := range f.limits {
		lo = min(lo, l)
	}
	t.Logf("requests %d, throttled %d, concurrency min %d, now %d (max %d), most in flight %d",
		f.requests, tr.Throttled, lo, tr.Concurrency, tr.MaxConcurrency, f.maxSeen.Load())
	if !tr.Throttling || tr.Throttled < 100 {
		t.Errorf("traffic %+v: want throttling, with the 100+ throttling answers counted", tr)
	}
	if lo > 4 {
		t.Errorf("concurrency never fell below %d under throttling", lo)
	}
	if tr.Concurrency <= lo {
		t.Errorf("concurrency %d did not climb back from %d", tr.Concurrency, lo)
	}
	if int(f.maxSeen.Load()) > maxInFlight {
		t.Errorf("%d requests in flight at once; limit %d", f.maxSeen.Load(), maxInFlight)
	}
}

// TestThrottlingOutlastsMinioRetries: a store that throttles 25 answers in
// a row, more than minio-go's ten tries, still takes the object; the
// throttling answers were all seen.
func TestThrottlingOutlastsMinioRetries(t *testing.T) {
	f := &fakeS3{throttle: func(n int) bool { return n < 25 }}
	s := fakeS3Store(t, f)
	if err := s.Put(context.Background(), "one", strings.NewReader("data"), 4, "text/plain"); err != nil {
		t.Fatalf("put through 25 throttling answers: %v", err)
	}
	if tr := s.Traffic(); tr.Throttled != 25 || f.requests != 26 || string(f.objects["/bkt/one"]) != "data" {
		t.Errorf("throttled %d, requests %d, stored %q; want 25, 26, \"data\"", tr.Throttled, f.requests, f.objects["/bkt/one"])
	}
}
