package store

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// RateSchedule is the upload cap by time of day: Rate outside the
// windows, each window's own inside it. Times are wall-clock times in the
// daemon's time zone (TZ, else /etc/localtime), so a window follows
// daylight saving time as people do. A window may cross midnight
// (22:00-06:00); windows do not overlap. 0 means no cap.
//
// Its text form, as --max-upload-rate takes it:
//
//	20MiB
//	20MiB, 00:00-07:00=unlimited
//	8MiB, 09:00-18:00=2MiB, 22:00-06:00=0
type RateSchedule struct {
	Rate    int64 // bytes a second outside the windows; 0: no cap
	Windows []RateWindow
}

// RateWindow is a daily span [From, To) in minutes after midnight (To up
// to 24*60; To < From crosses midnight) and the cap within it.
type RateWindow struct {
	From, To int
	Rate     int64
}

// ParseRate reads bytes a second: a number with an optional unit, binary
// (KiB, MiB, GiB) or decimal (K/KB, M/MB, G/GB), and an optional "/s":
// "20MiB", "2.5MB/s", "800KiB", "0"; "unlimited" and "none" are 0, no cap.
func ParseRate(s string) (int64, error) {
	v := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	switch strings.ToLower(v) {
	case "unlimited", "none":
		return 0, nil
	}
	mult := 1.0
	for _, u := range rateUnits {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			v, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || f*mult >= 1<<62 {
		return 0, fmt.Errorf("%q: want bytes a second such as 20MiB, 2.5MB, or 0 (or unlimited) for no cap", s)
	}
	return int64(f * mult), nil
}

var rateUnits = []struct {
	suffix string
	mult   float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
	{"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"B", 1},
}

// ParseRateSchedule reads a schedule: a rate, then any number of
// HH:MM-HH:MM=RATE windows, comma-separated. The rate outside the windows
// may be left out (no cap there) but not given twice.
func ParseRateSchedule(s string) (RateSchedule, error) {
	var rs RateSchedule
	var def string
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		span, rate, isWindow := strings.Cut(part, "=")
		if !isWindow {
			if part == "" {
				return RateSchedule{}, fmt.Errorf("%q: an empty rate; want a rate such as 20MiB, then windows such as 00:00-07:00=unlimited, comma-separated", s)
			}
			if strings.Contains(part, ":") {
				return RateSchedule{}, fmt.Errorf("window %q has no rate; want %s=RATE, such as %s=unlimited", part, part, part)
			}
			if def != "" {
				return RateSchedule{}, fmt.Errorf("%q and %q: two rates for outside the windows; give one rate, then windows such as 00:00-07:00=unlimited", def, part)
			}
			r, err := ParseRate(part)
			if err != nil {
				return RateSchedule{}, err
			}
			def, rs.Rate = part, r
			continue
		}
		from, to, err := parseSpan(strings.TrimSpace(span))
		if err != nil {
			return RateSchedule{}, err
		}
		r, err := ParseRate(rate)
		if err != nil {
			return RateSchedule{}, fmt.Errorf("window %s: %w", strings.TrimSpace(span), err)
		}
		w := RateWindow{From: from, To: to, Rate: r}
		for _, o := range rs.Windows {
			if w.overlaps(o) {
				return RateSchedule{}, fmt.Errorf("windows %s and %s overlap; give each minute of the day one rate", o, w)
			}
		}
		rs.Windows = append(rs.Windows, w)
	}
	slices.SortFunc(rs.Windows, func(a, b RateWindow) int { return a.From - b.From })
	return rs, nil
}

// parseSpan reads HH:MM-HH:MM (the end may be 24:00).
func parseSpan(s string) (from, to int, err error) {
	bad := func() (int, int, error) {
		return 0, 0, fmt.Errorf("%q: want a window HH:MM-HH:MM=RATE in 24-hour time, such as 00:00-07:00=unlimited or 22:00-06:00=50MiB", s)
	}
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return bad()
	}
	from, okA := clockMinutes(strings.TrimSpace(a), false)
	to, okB := clockMinutes(strings.TrimSpace(b), true)
	if !okA || !okB {
		return bad()
	}
	if from == to {
		return 0, 0, fmt.Errorf("%q: an empty window; want an end after the start, such as 00:00-07:00", s)
	}
	if to == 24*60 {
		to = 0 // midnight: a window ending at 24:00 ends where the day starts
	}
	if from == to {
		return 0, 0, fmt.Errorf("%q: a window of the whole day; give the rate alone, not a window", s)
	}
	return from, to, nil
}

// clockMinutes reads HH:MM as minutes after midnight; 24:00 only as an end.
func clockMinutes(s string, end bool) (int, bool) {
	h, m, ok := strings.Cut(s, ":")
	if !ok || len(h) < 1 || len(h) > 2 || len(m) != 2 {
		return 0, false
	}
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if err1 != nil || err2 != nil || hh < 0 || mm < 0 || mm > 59 {
		return 0, false
	}
	if hh == 24 && mm == 0 && end {
		return 24 * 60, true
	}
	if hh > 23 {
		return 0, false
	}
	return hh*60 + mm, true
}

// contains reports whether minute m of the day is in the window.
func (w RateWindow) contains(m int) bool {
	if w.From < w.To {
		return w.From <= m && m < w.To
	}
	return m >= w.From || m < w.To
}

func (w RateWindow) overlaps(o RateWindow) bool {
	return w.contains(o.From) || o.contains(w.From)
}

func (w RateWindow) String() string {
	return fmt.Sprintf("%02d:%02d-%02d:%02d", w.From/60, w.From%60, w.To/60, w.To%60)
}

// At is the cap in force at t (0: none), by t's wall clock in its location.
func (rs RateSchedule) At(t time.Time) int64 {
	m := t.Hour()*60 + t.Minute()
	for _, w := range rs.Windows {
		if w.contains(m) {
			return w.Rate
		}
	}
	return rs.Rate
}

// Next is when the cap next changes after t, and to what; ok is false
// when it never does (no windows, or all at the rate outside them).
func (rs RateSchedule) Next(t time.Time) (at time.Time, rate int64, ok bool) {
	now := rs.At(t)
	var cands []time.Time
	y, mo, d := t.Date()
	for day := 0; day <= 2; day++ {
		for _, w := range rs.Windows {
			for _, m := range []int{w.From, w.To} {
				// time.Date normalises a wall time that a DST jump skips.
				c := time.Date(y, mo, d+day, m/60, m%60, 0, 0, t.Location())
				if c.After(t) {
					cands = append(cands, c)
				}
			}
		}
	}
	slices.SortFunc(cands, func(a, b time.Time) int { return a.Compare(b) })
	for _, c := range cands {
		if r := rs.At(c); r != now {
			return c, r, true
		}
	}
	return time.Time{}, 0, false
}

// String is the schedule in the form ParseRateSchedule reads.
func (rs RateSchedule) String() string {
	parts := []string{FormatRate(rs.Rate)}
	for _, w := range rs.Windows {
		parts = append(parts, w.String()+"="+FormatRate(w.Rate))
	}
	return strings.Join(parts, ", ")
}

// FormatRate is a rate as ParseRate reads it: 20MiB, 1500000, unlimited.
func FormatRate(r int64) string {
	switch {
	case r == 0:
		return "unlimited"
	case r%(1<<30) == 0:
		return strconv.FormatInt(r>>30, 10) + "GiB"
	case r%(1<<20) == 0:
		return strconv.FormatInt(r>>20, 10) + "MiB"
	case r%(1<<10) == 0:
		return strconv.FormatInt(r>>10, 10) + "KiB"
	}
	return strconv.FormatInt(r, 10)
}
