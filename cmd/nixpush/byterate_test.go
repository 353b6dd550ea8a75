package main

import "testing"

func TestParseByteRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{in: "0", want: 0},
		{in: "20MiB", want: 20 << 20},
		{in: "20MiB/s", want: 20 << 20},
		{in: "2.5MB", want: 2_500_000},
		{in: "800KiB", want: 800 << 10},
		{in: "1G", want: 1e9},
		{in: "1048576", want: 1 << 20},
		{in: "fast", bad: true},
		{in: "-1MiB", bad: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseByteRate(tc.in)
			if tc.bad != (err != nil) || got != tc.want {
				t.Errorf("parseByteRate(%q) = %d, %v; want %d (error: %v)", tc.in, got, err, tc.want, tc.bad)
			}
		})
	}
}
