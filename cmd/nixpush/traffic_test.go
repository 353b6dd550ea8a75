package main

import (
	"testing"
	"time"

	"github.com/nixpush/nixpush/api"
)

// TestTrafficLine: status's traffic line shows the cap now, the rate now,
// and, under a schedule, the next change and the schedule itself.
func TestTrafficLine(t *testing.T) {
	now := time.Date(2026, 12, 3, 21, 30, 0, 0, time.Local)
	next := time.Date(2026, 12, 4, 0, 0, 0, 0, time.Local)
	for _, tc := range []struct {
		name string
		t    api.Traffic
		want string
	}{
		{"no cap", api.Traffic{Concurrency: 64, MaxConcurrency: 64, UploadRate: 3 << 20},
			"64/64 requests at once, 0 in flight; upload 3.0 MiB/s (no cap)"},
		{"a cap", api.Traffic{Concurrency: 64, MaxConcurrency: 64, UploadRate: 20 << 20, UploadRateCap: 20 << 20},
			"64/64 requests at once, 0 in flight; upload 20.0 MiB/s (cap 20.0 MiB/s)"},
		{"a schedule", api.Traffic{Concurrency: 64, MaxConcurrency: 64, UploadRate: 20 << 20, UploadRateCap: 20 << 20,
			UploadRateSchedule: "20MiB, 00:00-07:00=unlimited", UploadRateCapNextAt: &next},
			"64/64 requests at once, 0 in flight; upload 20.0 MiB/s (cap 20.0 MiB/s; no cap from 00:00, in 2h30m) by the schedule 20MiB, 00:00-07:00=unlimited"},
	} {
		if got := trafficLine(&tc.t, now); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
	}
}
