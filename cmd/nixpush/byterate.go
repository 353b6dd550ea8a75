package main

import "github.com/nixpush/nixpush/store"

// rateFlag is --max-upload-rate: a rate, optionally with time-of-day
// windows of their own ("20MiB, 00:00-07:00=unlimited"); see
// store.ParseRateSchedule.
type rateFlag struct{ store.RateSchedule }

func (r *rateFlag) Set(s string) error {
	rs, err := store.ParseRateSchedule(s)
	if err != nil {
		return err
	}
	r.RateSchedule = rs
	return nil
}

func (r *rateFlag) String() string {
	if r == nil {
		return ""
	}
	return r.RateSchedule.String()
}
