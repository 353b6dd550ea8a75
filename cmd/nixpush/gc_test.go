package main

import (
	"testing"
	"time"
)

func TestParseAge(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{in: "30d", want: 30 * 24 * time.Hour},
		{in: "1d12h", want: 36 * time.Hour},
		{in: "36h", want: 36 * time.Hour},
		{in: "90m", want: 90 * time.Minute},
		{in: "0s", want: 0},
		{in: "3x", bad: true},
		{in: "-1h", bad: true},
		{in: "d", bad: true},
		{in: "", bad: true},
	} {
		got, err := parseAge(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("parseAge(%q) = %v, %v; want %v (error: %v)", tc.in, got, err, tc.want, tc.bad)
		}
		if !tc.bad && got > 0 {
			if back, err := parseAge(ageFlag{&got}.String()); err != nil || back != got {
				t.Errorf("%q printed as %q reads back as %v, %v", tc.in, ageFlag{&got}.String(), back, err)
			}
		}
	}
}
