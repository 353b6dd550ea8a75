package store

import (
	"context"
	"io"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{in: "0", want: 0},
		{in: "unlimited", want: 0},
		{in: "none", want: 0},
		{in: "20MiB", want: 20 << 20},
		{in: "20MiB/s", want: 20 << 20},
		{in: "2.5MB", want: 2_500_000},
		{in: "800KiB", want: 800 << 10},
		{in: "1G", want: 1e9},
		{in: "1048576", want: 1 << 20},
		{in: "fast", bad: true},
		{in: "-1MiB", bad: true},
		{in: "", bad: true},
	} {
		got, err := ParseRate(tc.in)
		if tc.bad != (err != nil) || got != tc.want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d (error: %v)", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

func TestParseRateSchedule(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    string // the schedule as String writes it
		wantErr string // a part of the error
	}{
		{in: "20MiB", want: "20MiB"},
		{in: "0", want: "unlimited"},
		{in: "20MiB,00:00-07:00=unlimited", want: "20MiB, 00:00-07:00=unlimited"},
		{in: " 8MiB , 22:00-06:00 = 0, 09:00-18:00=2MiB ", want: "8MiB, 09:00-18:00=2MiB, 22:00-06:00=unlimited"},
		{in: "00:00-07:00=50MiB", want: "unlimited, 00:00-07:00=50MiB"},
		{in: "1MiB, 18:00-24:00=0", want: "1MiB, 18:00-00:00=unlimited"},
		{in: "1MiB, 7:30-8:00=2MiB", want: "1MiB, 07:30-08:00=2MiB"},
		{in: "fast", wantErr: `"fast": want bytes a second such as 20MiB`},
		{in: "20MiB, 30MiB", wantErr: "two rates for outside the windows"},
		{in: "20MiB, 00:00-07:00", wantErr: `window "00:00-07:00" has no rate; want 00:00-07:00=RATE`},
		{in: "20MiB, 7:00=1MiB", wantErr: `"7:00": want a window HH:MM-HH:MM=RATE`},
		{in: "20MiB, 25:00-07:00=1MiB", wantErr: "want a window HH:MM-HH:MM=RATE"},
		{in: "20MiB, 07:60-08:00=1MiB", wantErr: "want a window HH:MM-HH:MM=RATE"},
		{in: "20MiB, 24:00-08:00=1MiB", wantErr: "want a window HH:MM-HH:MM=RATE"},
		{in: "20MiB, 07:00-07:00=1MiB", wantErr: "an empty window"},
		{in: "20MiB, 00:00-24:00=1MiB", wantErr: "a window of the whole day; give the rate alone"},
		{in: "20MiB, 00:00-07:00=0, 06:00-08:00=1MiB", wantErr: "windows 00:00-07:00 and 06:00-08:00 overlap"},
		{in: "20MiB, 22:00-02:00=0, 01:00-03:00=1MiB", wantErr: "windows 22:00-02:00 and 01:00-03:00 overlap"},
		{in: "20MiB, 00:00-07:00=slow", wantErr: `window 00:00-07:00: "slow": want bytes a second`},
		{in: "20MiB,", wantErr: "an empty rate"},
	} {
		rs, err := ParseRateSchedule(tc.in)
		switch {
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("ParseRateSchedule(%q) = %v, %v; want an error with %q", tc.in, rs, err, tc.wantErr)
		case tc.wantErr == "" && err != nil:
			t.Errorf("ParseRateSchedule(%q): %v", tc.in, err)
		case tc.wantErr == "" && rs.String() != tc.want:
			t.Errorf("ParseRateSchedule(%q) = %q; want %q", tc.in, rs, tc.want)
		case err != nil && strings.Contains(err.Error(), "\n"):
			t.Errorf("ParseRateSchedule(%q): error of more than one line: %q", tc.in, err)
		}
	}
}

// TestRateScheduleAtNext: the cap at each moment of the day and its next
// change, across midnight and across a daylight saving time jump.
func TestRateScheduleAtNext(t *testing.T) {
	rs, err := ParseRateSchedule("20MiB, 22:00-06:00=0, 12:00-13:00=5MiB")
	if err != nil {
		t.Fatal(err)
	}
	day := func(h, m int) time.Time { return time.Date(2026, 12, 3, h, m, 0, 0, time.UTC) }
	for _, tc := range []struct {
		at       time.Time
		cap      int64
		next     time.Time
		nextRate int64
	}{
		{day(0, 0), 0, day(6, 0), 20 << 20},
		{day(5, 59), 0, day(6, 0), 20 << 20},
		{day(6, 0), 20 << 20, day(12, 0), 5 << 20},
		{day(12, 30), 5 << 20, day(13, 0), 20 << 20},
		{day(13, 0), 20 << 20, day(22, 0), 0},
		{day(23, 59), 0, day(24+6, 0), 20 << 20},
	} {
		if got := rs.At(tc.at); got != tc.cap {
			t.Errorf("cap at %s: %d; want %d", tc.at.Format("15:04"), got, tc.cap)
		}
		next, rate, ok := rs.Next(tc.at)
		if !ok || !next.Equal(tc.next) || rate != tc.nextRate {
			t.Errorf("next change after %s: %v to %d (%v); want %v to %d", tc.at.Format("15:04"), next, rate, ok, tc.next, tc.nextRate)
		}
	}
	if _, _, ok := (RateSchedule{Rate: 1 << 20}).Next(day(1, 0)); ok {
		t.Error("a schedule without windows has a next change")
	}
	// Wall-clock time: on the night Europe/Berlin goes back an hour, the
	// window 00:00-07:00 lasts eight hours, and its end is 07:00 local.
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatalf("time zone data: %v", err)
	}
	rs, _ = ParseRateSchedule("20MiB, 00:00-07:00=0")
	mid := time.Date(2026, 10, 25, 0, 0, 0, 0, berlin)
	next, _, _ := rs.Next(mid)
	if next.Hour() != 7 || next.Sub(mid) != 8*time.Hour {
		t.Errorf("night of the DST change: the window ends at %v, %v after midnight; want 07:00 local, 8h", next, next.Sub(mid))
	}
}

// TestBandwidthScheduleLive reads one long body through a cap whose
// schedule lifts it at 07:00 and sets a lower one at 07:00:10, on a fake
// clock: each second carries the cap of its moment, changed mid-body.
func TestBandwidthScheduleLive(t *testing.T) {
	rs, err := ParseRateSchedule("4MiB, 07:00-07:01=16MiB")
	if err != nil {
		t.Fatal(err)
	}
	clk := &sleepClock{t: time.Date(2026, 12, 3, 6, 59, 50, 0, time.UTC)}
	b := newBandwidth(rs, clk.now, clk.sleep)
	var tr Traffic
	b.traffic(&tr)
	if tr.RateCap != 4<<20 || !tr.RateCapNext.Equal(time.Date(2026, 12, 3, 7, 0, 0, 0, time.UTC)) || tr.RateCapNextRate != 16<<20 ||
		tr.RateSchedule != "4MiB, 07:00-07:01=16MiB" {
		t.Fatalf("traffic at 06:59:50: %+v; want cap 4 MiB/s, 16 MiB/s from 07:00, the schedule", tr)
	}
	body := b.body(context.Background(), io.NopCloser(io.LimitReader(zeros{}, 1<<40)))
	buf := make([]byte, 32<<10)
	perSec := map[int]int64{} // bytes read in each second, by its Unix time
	start := clk.t.Unix()
	for clk.t.Before(time.Date(2026, 12, 3, 7, 1, 10, 0, time.UTC)) {
		n, err := body.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		perSec[int(clk.t.Unix()-start)] += int64(n)
	}
	// Seconds 1-8 before 07:00 at 4 MiB/s; 11-68 within the window at
	// 16 MiB/s; 71-78 after it at 4 MiB/s again (the seconds at each
	// change carry a little of both).
	for _, span := range []struct {
		from, to int
		rate     int64
	}{{1, 9, 4 << 20}, {11, 69, 16 << 20}, {71, 79, 4 << 20}} {
		for s := span.from; s < span.to; s++ {
			if math.Abs(float64(perSec[s])/float64(span.rate)-1) > 0.01 {
				t.Errorf("second %d (%s): %d bytes; want %d within 1%%", s, time.Unix(start+int64(s), 0).UTC().Format("15:04:05"), perSec[s], span.rate)
			}
		}
	}
	b.traffic(&tr)
	if tr.RateCap != 4<<20 || tr.RateCapNextRate != 16<<20 || !tr.RateCapNext.Equal(time.Date(2026, 12, 4, 7, 0, 0, 0, time.UTC)) {
		t.Errorf("traffic after the window: %+v; want cap 4 MiB/s, 16 MiB/s from 07:00 the next day", tr)
	}
}
