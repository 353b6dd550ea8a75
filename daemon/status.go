package daemon

import (
	"fmt"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/internal/version"
	"github.com/nixpush/nixpush/spool"
)

// maxListed bounds the paths listed in a status answer.
const maxListed = 100

// status is the answer to /v1/status.
func (d *Daemon) status() api.Status {
	qs := d.queue.Stats()
	us := d.up.Stats()
	qerr, qsince, _, held := d.qhealth.state()
	spooled, _ := spool.Files(d.cfg.SpoolDir)
	st := api.Status{
		Queued: qs.Queued, Active: qs.Active, Failed: qs.Failed, Done: qs.Done,
		// Drained only when every path handed over is accounted for: none
		// queued or in flight, none held in memory for want of a commit,
		// no spooled request waiting to be imported.
		Drained: qs.Queued == 0 && qs.Active == 0 && len(held) == 0 && len(spooled) == 0,
		Held:    len(held),
		Spooled: len(spooled),
		Uploaded: api.Uploaded{Paths: us.Paths, NarBytes: us.NarBytes, FileBytes: us.FileBytes, Skipped: us.Skipped, Requests: us.Requests,
			Logs: us.Logs, Filtered: us.Filtered, Realisations: us.Realisations,
			NarBytesPerSecond: d.rates.rate(), Since: d.started},
		Store:      fmt.Sprint(d.up.Store()),
		Version:    version.Get(),
		StoreCheck: d.health.status(),
		Progress:   d.session.progress(us),
	}
	st.GCSettings = d.up.SettingsProblem()
	if t, ok := d.up.Traffic(); ok {
		st.Traffic = &api.Traffic{Throttling: t.Throttling, Throttled: t.Throttled,
			Concurrency: t.Concurrency, MaxConcurrency: t.MaxConcurrency, InFlight: t.InFlight,
			UploadRate: t.Rate, UploadRateCap: t.RateCap, Sent: t.Sent, UploadRateSchedule: t.RateSchedule}
		if !t.RateCapNext.IsZero() {
			next := t.RateCapNext
			st.Traffic.UploadRateCapNextAt, st.Traffic.UploadRateCapNext = &next, t.RateCapNextRate
		}
		if !t.LastThrottled.IsZero() {
			last := t.LastThrottled
			st.Traffic.LastThrottled = &last
		}
	}
	if qerr != nil {
		st.QueueError = "queue cannot write: " + qerr.Error()
		st.QueueErrorSince = &qsince
	}
	st.HeldPaths = held[:min(len(held), maxListed)]
	if !qs.OldestQueued.IsZero() {
		t := qs.OldestQueued
		st.OldestQueued = &t
	}
	if !us.LastPush.IsZero() {
		t := us.LastPush
		st.Uploaded.LastPush = &t
	}
	for _, f := range qs.Failures {
		st.Failures = append(st.Failures, api.Failure{Path: f.Path, Error: f.LastError, Attempts: f.Attempts, Since: f.UpdatedAt, Class: f.Class})
	}
	return st
}
