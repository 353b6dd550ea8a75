package main

import "github.com/nixpush/nixpush/uploader"

// rateFlag is --max-upload-rate: a rate, optionally with time-of-day
// windows of their own ("20MiB, 00:00-07:00=unlimited"); see
// uploader.ParseRateSchedule.
type rateFlag struct{ uploader.RateSchedule }

func (r *rateFlag) Set(s string) error {
	rs, err := uploader.ParseRateSchedule(s)
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
