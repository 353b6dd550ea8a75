package store

import (
	"context"
	"io"
	"sync"
	"time"
)

// The token bucket's depth is what may go out at once after a pause:
// burstTime of the cap, at least capBurst. A bucket too shallow loses the
// budget of the gaps in which nothing is sent though an upload is under
// way: between one multipart part's last byte and the next one's first
// the daemon waits for the store's answer (20 ms median, 49 ms at most,
// under a load of 17 on 2 cores), and a sleep may overshoot as long.
// A 64 KiB bucket averaged 18.5 MiB/s under a 20 MiB/s cap; 1 MiB, which
// covers 50 ms at 20 MiB/s, held 20 MiB/s at low load, but only 10 ms at
// 100 MiB/s (78 MiB/s with 25 ms answers). A tenth of a second of the cap
// covers the gaps at any cap; its cost is as much above the cap after an
// idle moment (2 MiB at 20 MiB/s).
//
// Beyond that, the store's own time is made up: the wait for its answer
// after a request's last byte, while nothing else was sent (up to
// maxAnswerCredit), is added to the bucket's depth for the next bytes.
// Under a load of 21 on 2 cores the answers came 27 ms (median) but up to
// 427 ms after a part's last byte, and a 100 ms bucket alone held
// 17.9 MiB/s under 20 over 1 GiB. Its cost: after such a wait, as much
// goes out at once above the cap as the wait left unsent.
const (
	capBurst        = 1 << 20
	burstTime       = 100 * time.Millisecond
	maxAnswerCredit = time.Second
)

// burst is the bucket's depth under a cap of rate bytes a second.
func burst(rate int64) float64 {
	return max(capBurst, float64(rate)*burstTime.Seconds())
}

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
	full   bool    // tokens is the bucket's depth, whatever the cap (at start, and while there is none)
	last   time.Time
	extra  float64 // bytes the bucket may hold above its depth: an answer's wait not yet made up
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
	return &bandwidth{now: now, sleep: sleepFn, sched: sched, full: true}
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
		b.full = true
		b.mu.Unlock()
		return nil
	}
	if b.full {
		b.tokens, b.full = burst(rate), false
	} else {
		b.tokens = min(burst(rate)+b.extra, b.tokens+now.Sub(b.last).Seconds()*float64(rate))
	}
	b.last = now
	b.tokens -= float64(n)
	// What is left above the depth is what remains to be made up.
	b.extra = max(0, min(b.extra, b.tokens-burst(rate)))
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
	b      *bandwidth
	ctx    context.Context
	readAt time.Time // when the last bytes were let go
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
		c.readAt = c.b.now()
	}
	return n, err
}

// answered says the store answered the request whose body was r (a body
// from b.body): the time since its last bytes went, if nothing was sent
// since, is credited to the next take (see maxAnswerCredit).
func (b *bandwidth) answered(r io.ReadCloser) {
	c, ok := r.(*cappedBody)
	if !ok || c.readAt.IsZero() {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	from := c.readAt
	if b.last.After(from) {
		from = b.last // another body was read meanwhile: the line was not idle
	}
	rate := b.sched.At(b.now())
	b.extra = max(b.extra, min(b.now().Sub(from), maxAnswerCredit).Seconds()*float64(rate))
}
