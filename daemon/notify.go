package daemon

import (
	"context"
	"sync"
	"time"
)

// rateWindow is how far back the upload rate looks.
const rateWindow = time.Minute

// meter keeps samples of the uploaded NAR bytes to tell the recent rate.
type meter struct {
	mu      sync.Mutex
	samples []sample
}

type sample struct {
	at    time.Time
	bytes int64
}

func (m *meter) add(at time.Time, bytes int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.samples = append(m.samples, sample{at, bytes})
	for len(m.samples) > 2 && at.Sub(m.samples[0].at) > rateWindow {
		m.samples = m.samples[1:]
	}
}

// rate is bytes per second between the oldest and newest sample.
func (m *meter) rate() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.samples) < 2 {
		return 0
	}
	first, last := m.samples[0], m.samples[len(m.samples)-1]
	dt := last.at.Sub(first.at).Seconds()
	if dt <= 0 {
		return 0
	}
	return float64(last.bytes-first.bytes) / dt
}

// report keeps systemd informed until ctx is done: STATUS= with live
// figures every StatusInterval, and WATCHDOG=1 at half the watchdog
// interval when systemd asked for one.
func (d *Daemon) report(ctx context.Context) error {
	every := d.cfg.StatusInterval
	if d.cfg.Watchdog > 0 && d.cfg.Watchdog/2 < every {
		every = d.cfg.Watchdog / 2
	}
	t := time.NewTicker(every)
	defer t.Stop()
	last := ""
	for {
		now := time.Now()
		d.rates.add(now, d.up.Stats().NarBytes)
		if d.cfg.Notify != nil {
			if line := "STATUS=" + d.status().Line(now); line != last {
				d.cfg.Notify(line)
				last = line
			}
			if d.cfg.Watchdog > 0 {
				d.cfg.Notify("WATCHDOG=1")
			}
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil
		}
	}
}
