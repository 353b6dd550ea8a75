package main

import (
	"fmt"
	"strconv"
	"strings"
)

// byteRate is a flag of bytes a second: a number with an optional unit,
// binary (KiB, MiB, GiB) or decimal (K/KB, M/MB, G/GB), and an optional
// "/s": "20MiB", "2.5MB/s", "800KiB", "0".
type byteRate int64

var rateUnits = []struct {
	suffix string
	mult   float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
	{"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"B", 1},
}

func parseByteRate(s string) (int64, error) {
	v := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	mult := 1.0
	for _, u := range rateUnits {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			v, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("%q: want bytes a second such as 20MiB, 2.5MB or 0", s)
	}
	return int64(f * mult), nil
}

func (r *byteRate) Set(s string) error {
	n, err := parseByteRate(s)
	if err != nil {
		return err
	}
	*r = byteRate(n)
	return nil
}

func (r *byteRate) String() string { return strconv.FormatInt(int64(*r), 10) }
