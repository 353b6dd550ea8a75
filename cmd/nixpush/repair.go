package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/api/client"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/retention"
	"github.com/nixpush/nixpush/store"
)

// repairCache runs verify --repair (retention.RepairAgain) with the
// daemon behind --socket pushing again, and prints the verify after it.
func (f *verifyFlags) repairCache(ctx context.Context, b store.Bucket, rep *retention.VerifyReport, opts retention.VerifyOptions,
	stdout, stderr io.Writer) ([]string, *retention.VerifyReport, error) {
	ra := retention.RepairAgainOptions{
		Repair: retention.RepairOptions{Host: hostname(), SingleGC: f.singleGC},
		Verify: opts,
		Pusher: &daemonPusher{c: client.New(f.socket), socket: f.socket, timeout: f.timeout},
		Local:  &nix.Client{},
		Warn:   func(w string) { fmt.Fprintf(stderr, "nixpush verify: repair: warning: %s\n", w) },
	}
	if !f.asJSON {
		ra.Log = stdout
	}
	invalid, after, err := retention.RepairAgain(ctx, b, rep, ra)
	if after != nil && !f.asJSON {
		fmt.Fprint(stdout, "after repair: ")
		printVerify(stdout, after)
	}
	return invalid, after, err
}

// daemonPusher is the daemon behind its socket, pushing paths again for
// a repair.
type daemonPusher struct {
	c       *client.Client
	socket  string
	timeout time.Duration
}

func (d *daemonPusher) String() string { return "the daemon (" + d.socket + ")" }

func (d *daemonPusher) Ready(ctx context.Context) error {
	if _, err := d.c.Status(ctx); err != nil {
		return explain(err)
	}
	return nil
}

func (d *daemonPusher) Push(ctx context.Context, paths []string) error {
	// Recheck: the daemon may believe the cache holds them still.
	if _, err := d.c.Enqueue(ctx, api.EnqueueRequest{Paths: paths, Recheck: true}); err != nil {
		return explain(err)
	}
	return waitQuiet(ctx, d.c, d.timeout)
}

// waitQuiet waits until the daemon's queue is drained, failing when a
// path failed or the time runs out.
func waitQuiet(ctx context.Context, c *client.Client, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		st, err := c.Wait(ctx, min(time.Minute, time.Until(deadlineOf(ctx))))
		if err != nil {
			return fmt.Errorf("waiting for the daemon: %w", explain(err))
		}
		if st.Drained {
			if st.Failed > 0 {
				var lines []string
				for _, f := range st.Failures {
					lines = append(lines, f.Path+": "+f.Error)
				}
				return fmt.Errorf("the daemon failed %d paths: %s", st.Failed, strings.Join(lines, "; "))
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("the daemon has not pushed everything after %s (%d queued, %d active)", timeout, st.Queued, st.Active)
		}
	}
}

func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}
