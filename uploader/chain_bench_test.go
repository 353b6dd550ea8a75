package uploader

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nixpush/nixpush/store"

	"github.com/rs/zerolog"

	"github.com/nixpush/nixpush/internal/testenv"
)

// timingStore records how long each .narinfo PUT took and when it ended.
type timingStore struct {
	store.Bucket
	mu       sync.Mutex
	narinfo  []time.Duration
	nars     int
	requests int
}

func (s *timingStore) Put(ctx context.Context, key string, r io.Reader, size int64, ct string) error {
	start := time.Now()
	err := s.Bucket.Put(ctx, key, r, size, ct)
	s.mu.Lock()
	s.requests++
	if strings.HasSuffix(key, ".narinfo") {
		s.narinfo = append(s.narinfo, time.Since(start))
	} else if strings.HasPrefix(key, "nar/") {
		s.nars++
	}
	s.mu.Unlock()
	return err
}

// ListTop passes listings through, as the S3 store has them.
func (s *timingStore) ListTop(ctx context.Context, fn func(string) bool) error {
	s.mu.Lock()
	s.requests++
	s.mu.Unlock()
	return s.Bucket.(store.Lister).ListTop(ctx, fn)
}

func (s *timingStore) List(ctx context.Context, prefix string, fn func(store.Object) error) error {
	s.mu.Lock()
	s.requests++
	s.mu.Unlock()
	return s.Bucket.List(ctx, prefix, fn)
}

func (s *timingStore) Get(ctx context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	s.requests++
	s.mu.Unlock()
	return s.Bucket.Get(ctx, key)
}

func (s *timingStore) Has(ctx context.Context, key string) (bool, error) {
	s.mu.Lock()
	s.requests++
	s.mu.Unlock()
	return s.Bucket.Has(ctx, key)
}

// BenchmarkChainS3 pushes a 500-deep chain (each path referring to the one
// before, 258 KiB each, half random, like bench/'s 500-path workload) to a
// fresh bucket of a real MinIO per round, and compares the push's time with
// the sum of its .narinfo PUTs, which the closure rule makes serial: what
// is left over is per-level cost of the uploader's own.
func BenchmarkChainS3(b *testing.B) {
	const n = 500
	t := &testing.T{}
	fs := newFakeStore(t)
	fs.dir = b.TempDir()
	var prev []string
	var top string
	for i := range n {
		data := make([]byte, 258<<10)
		rand.Read(data[:len(data)/2])
		for j := len(data) / 2; j < len(data); j++ {
			data[j] = byte("nixpush chain level "[j%20])
		}
		top = fs.add(t, fmt.Sprintf("chain-%d", i), data, prev...)
		prev = []string{top}
	}
	m := testenv.MinIO(b)
	for _, kv := range m.CredentialsEnv() {
		k, v, _ := strings.Cut(kv, "=")
		b.Setenv(k, v)
	}
	key := testKey(t)
	round := 0
	var serial, total time.Duration
	for b.Loop() {
		b.StopTimer()
		bucket := fmt.Sprintf("chain-%d", round)
		round++
		m.MakeBucket(b, bucket, false)
		st, err := store.Open(context.Background(), m.StoreURI(bucket), store.Options{})
		if err != nil {
			b.Fatal(err)
		}
		ts := &timingStore{Bucket: st.(store.Bucket)}
		u := New(Config{Store: ts, Nix: fs, Key: key, Compression: Zstd, Jobs: benchJobs(), StoreDir: fs.dir, Log: zerolog.Nop()})
		m0, _ := m.CPUTime()
		c0 := selfCPU()
		b.StartTimer()
		start := time.Now()
		if err := u.Push(context.Background(), []string{top})[0]; err != nil {
			b.Fatal(err)
		}
		took := time.Since(start)
		b.StopTimer()
		m1, _ := m.CPUTime()
		c1 := selfCPU()
		var sum time.Duration
		for _, d := range ts.narinfo {
			sum += d
		}
		sort.Slice(ts.narinfo, func(i, j int) bool { return ts.narinfo[i] < ts.narinfo[j] })
		b.Logf("chain of %d: %.2f s; %d .narinfo PUTs sum %.2f s (p50 %.2f ms, p90 %.2f ms); per level beyond the PUT %.2f ms; %d NARs, %d requests",
			n, took.Seconds(), len(ts.narinfo), sum.Seconds(), ms(ts.narinfo[len(ts.narinfo)/2]), ms(ts.narinfo[len(ts.narinfo)*9/10]),
			ms((took-sum)/n), ts.nars, ts.requests)
		b.Logf("  CPU: uploader %.2f s, MinIO %.2f s", (c1 - c0).Seconds(), (m1 - m0).Seconds())
		serial += sum
		total += took
		b.StartTimer()
	}
	// The floor: the same number of small PUTs one after the other, on
	// an idle MinIO.
	st, err := store.Open(context.Background(), m.StoreURI("chain-0"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	text := strings.Repeat("a narinfo's size of text\n", 40)
	var lone []time.Duration
	for i := range n {
		start := time.Now()
		if err := st.Put(context.Background(), fmt.Sprintf("lone-%d.narinfo", i), strings.NewReader(text), int64(len(text)), "text/x-nix-narinfo"); err != nil {
			b.Fatal(err)
		}
		lone = append(lone, time.Since(start))
	}
	var loneSum time.Duration
	for _, d := range lone {
		loneSum += d
	}
	sort.Slice(lone, func(i, j int) bool { return lone[i] < lone[j] })
	b.Logf("floor: %d small PUTs one after the other on an idle MinIO: %.2f s (p50 %.2f ms, p90 %.2f ms)",
		n, loneSum.Seconds(), ms(lone[n/2]), ms(lone[n*9/10]))
	b.ReportMetric(ms(loneSum/n), "ms/lone-put")
	b.ReportMetric(ms(total/time.Duration(round)/n), "ms/level")
	b.ReportMetric(ms((total-serial)/time.Duration(round)/n), "ms/level-beyond-put")
}

// benchJobs is NIXPUSH_BENCH_JOBS, or 4.
func benchJobs() int {
	if n, err := strconv.Atoi(os.Getenv("NIXPUSH_BENCH_JOBS")); err == nil {
		return n
	}
	return 4
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
