package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/api/client"
)

// progressEvery is how often the progress line is redrawn.
const progressEvery = 250 * time.Millisecond

// showProgress redraws one progress line on the terminal w until the
// returned stop is called; stop draws the last figures, ends the line and
// may be called more than once.
func showProgress(ctx context.Context, c *client.Client, since time.Time, w io.Writer) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	var first *sample
	draw := func() {
		st, err := c.Status(context.WithoutCancel(ctx))
		if err != nil {
			return
		}
		now := time.Now()
		if first == nil && sessionOf(st, since) {
			first = &sample{at: now, bytes: st.Progress.NarBytesDone}
		}
		fmt.Fprintf(w, "\r\033[K%s", progressLine(st, since, first, now))
	}
	go func() {
		defer close(done)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			draw()
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
			draw()
			fmt.Fprint(w, "\n")
		})
	}
}

type sample struct {
	at    time.Time
	bytes int64
}

// sessionOf reports whether the daemon's progress figures are of work
// started after since.
func sessionOf(st api.Status, since time.Time) bool {
	return st.Progress.Since != nil && !st.Progress.Since.Before(since)
}

// progressLine is "pushing: 12/300 paths, 45.2 MiB/300.0 MiB, 3 cached,
// 12.3 MiB/s, ETA 21s, 1 failed".
func progressLine(st api.Status, since time.Time, first *sample, now time.Time) string {
	var b strings.Builder
	if !sessionOf(st, since) {
		fmt.Fprintf(&b, "waiting: %d queued, %d active", st.Queued, st.Active)
	} else {
		p := st.Progress
		fmt.Fprintf(&b, "pushing: %d/%d paths, %s/%s, %d cached", p.PathsDone, p.Paths, api.Bytes(p.NarBytesDone), api.Bytes(p.NarBytes), p.Cached)
		if first != nil {
			if dt := now.Sub(first.at).Seconds(); dt > 0.5 {
				rate := float64(p.NarBytesDone-first.bytes) / dt
				fmt.Fprintf(&b, ", %s/s", api.Bytes(int64(rate)))
				if left := p.NarBytes - p.NarBytesDone; rate > 0 && left > 0 {
					fmt.Fprintf(&b, ", ETA %s", (time.Duration(float64(left)/rate) * time.Second).Round(time.Second))
				}
			}
		}
	}
	if st.Failed > 0 {
		fmt.Fprintf(&b, ", %d failed", st.Failed)
	}
	if !st.StoreCheck.OK && st.StoreCheck.Error != "" {
		fmt.Fprintf(&b, "; %s", st.StoreCheck.Error)
	}
	return b.String()
}

// summary is the last line of push --wait and wait: "pushed 300 paths
// (300.0 MiB NAR) in 25s, 5 already in the cache; nothing queued or failed".
func summary(st api.Status, since time.Time) string {
	tail := "nothing queued or failed"
	if st.Failed > 0 {
		tail = fmt.Sprintf("%d failed", st.Failed)
	}
	if !sessionOf(st, since) {
		// Nothing ran after since: all was pushed already.
		return "nothing to push: every path was pushed already; " + tail
	}
	p := st.Progress
	took := ""
	if p.Since != nil {
		took = " in " + time.Since(*p.Since).Round(100*time.Millisecond).String()
	}
	return fmt.Sprintf("pushed %d paths (%s NAR)%s, %d already in the cache; %s",
		p.PathsDone, api.Bytes(p.NarBytesDone), took, p.Cached, tail)
}

// afterProgress ends the progress line before the first write of a final
// message.
type afterProgress struct {
	w    io.Writer
	stop func()
}

func (a *afterProgress) Write(b []byte) (int, error) {
	a.stop()
	return a.w.Write(b)
}
