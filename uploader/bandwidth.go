package uploader

import (
	"context"
	"io"
	"sync"
	"time"
)

// capBurst is the token bucket's depth: what may go out at once after a
// pause. Small bursts lose budget in the gaps between requests (a 64 KiB
// burst averaged 18.5 MiB/s under a 20 MiB/s cap, the gaps between
// multipart parts left unused); about 1 MiB held the cap within 0.1%.
const capBurst = 1 << 20

// rateWindow is how many one-second buckets the measured rate spans.
const rateWindow = 5

// bandwidth caps the bytes of request bodies sent to a store, across all
// requests, with a token bucket, and measures what goes out.
type bandwidth struct {
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error
	sched RateSchedule // the cap by time of day, read at each take: a change applies at once

	mu     sync.Mutex
	tokens float64 // may go negative: bytes reserved ahead of the bucket
	last   time.Time
	sent   int64
	secs   [rateWindow]int64 // bytes sent in each of the last seconds
	secAt  int64             // the Unix second of secs[secAt%rateWindow]
}

func newBandwidth(sched RateSchedule, now func() time.Time, sleepFn func(context.Context, time.Duration) error) *bandwidth {
	if now == nil {
		now = time.Now
	}
	if sleepFn == nil {
		sleepFn = Sleep
	}
	return &bandwidth{now: now, sleep: sleepFn, sched: sched, tokens: capBurst}
}

// take accounts n bytes about to be sent and waits until the cap allows
// them: a reservation, so that concurrent senders share the rate in the
// order they asked.
func (b *bandwidth) take(ctx context.Context, n int) error {
	b.mu.Lock()
	now := b.now()
	b.count(now, int64(n))
	rate := b.sched.At(now)
	if rate <= 0 {
		b.tokens, b.last = capBurst, now
		b.mu.Unlock()
		return nil
	}
	if !b.last.IsZero() {
		b.tokens = min(capBurst, b.tokens+now.Sub(b.last).Seconds()*float64(rate))
	}
	b.last = now
	b.tokens -= float64(n)
	debt := -b.tokens
	b.mu.Unlock()
	if debt <= 0 {
		return nil
	}
	return b.sleep(ctx, time.Duration(debt/float64(rate)*float64(time.Second)))
}

// count adds n bytes sent at now to the rate's buckets; b.mu is held.
func (b *bandwidth) count(now time.Time, n int64) {
	b.sent += n
	sec := now.Unix()
	if sec-b.secAt >= rateWindow {
		b.secs = [rateWindow]int64{}
	} else {
		for s := b.secAt + 1; s <= sec; s++ {
			b.secs[s%rateWindow] = 0
		}
	}
	if sec > b.secAt {
		b.secAt = sec
	}
	b.secs[sec%rateWindow] += n
}

func (b *bandwidth) traffic(t *Traffic) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	b.count(now, 0)
	// The full seconds before this one: the current one is still filling.
	var sum int64
	for s := now.Unix() - rateWindow + 1; s < now.Unix(); s++ {
		sum += b.secs[((s%rateWindow)+rateWindow)%rateWindow]
	}
	t.Rate = float64(sum) / (rateWindow - 1)
	t.RateCap = b.sched.At(now)
	t.RateCapNext, t.RateCapNextRate, _ = b.sched.Next(now)
	if len(b.sched.Windows) > 0 {
		t.RateSchedule = b.sched.String()
	}
	t.Sent = b.sent
}

// body wraps a request body so that reading it takes from the cap.
func (b *bandwidth) body(ctx context.Context, r io.ReadCloser) io.ReadCloser {
	return &cappedBody{ReadCloser: r, b: b, ctx: ctx}
}

type cappedBody struct {
	io.ReadCloser
	b   *bandwidth
	ctx context.Context
}

func (c *cappedBody) Read(p []byte) (int, error) {
	if len(p) > capBurst {
		p = p[:capBurst]
	}
	n, err := c.ReadCloser.Read(p)
	if n > 0 {
		if werr := c.b.take(c.ctx, n); werr != nil {
			return 0, werr
		}
	}
	return n, err
}
