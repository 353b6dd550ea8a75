package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mattn/go-isatty"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/api/client"
	"github.com/nixpush/nixpush/nix"
)

func clientFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("nixpush "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", envOr("NIXPUSH_SOCKET", api.DefaultSocket), "daemon socket (env NIXPUSH_SOCKET)")
	return fs, socket
}

func runPush(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, socket := clientFlags("push", stderr)
	wait := fs.Bool("wait", false, "wait until the queue is drained")
	storeDir := fs.String("store-dir", envOr("NIX_STORE_DIR", nix.DefaultStoreDir), "the Nix store directory")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "nixpush push: no paths given; usage: nixpush push [--wait] PATH... (for example /run/current-system)")
		return 2
	}
	var paths []string
	for _, a := range fs.Args() {
		p, err := resolveStorePath(*storeDir, a)
		if err != nil {
			fmt.Fprintf(stderr, "nixpush push: %v\n", err)
			return 2
		}
		paths = append(paths, p)
	}
	if err := checkValid(ctx, paths); err != nil {
		fmt.Fprintf(stderr, "nixpush push: %v\n", err)
		return 2
	}
	c := client.New(*socket)
	start := time.Now() // progress shown is of the work that starts after this
	// An explicit push checks the cache again: it may have lost paths
	// since the daemon last looked (expiry, a wiped bucket, a new store).
	res, err := c.Enqueue(ctx, api.EnqueueRequest{Paths: paths, Recheck: true})
	if err != nil {
		fmt.Fprintf(stderr, "nixpush push: %v\n", explain(err))
		return 1
	}
	fmt.Fprintf(stdout, "queued %d path(s) with their closures to check and push (%d already queued)\n", res.Added, res.Merged)
	if *wait {
		return waitDrained(ctx, c, 0, start, stdout, stderr)
	}
	return 0
}

// resolveStorePath turns an argument such as /run/current-system or
// ./result into the top-level store path it stands for.
func resolveStorePath(storeDir, arg string) (string, error) {
	p, err := filepath.Abs(arg)
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(p); err == nil {
		p = real
	} else if !strings.HasPrefix(p, storeDir+"/") {
		return "", fmt.Errorf("%s: %v", arg, errors.Unwrap(err))
	}
	rel, ok := strings.CutPrefix(p, storeDir+"/")
	if !ok || rel == "" {
		return "", fmt.Errorf("%s is not in the Nix store %s", arg, storeDir)
	}
	top, _, _ := strings.Cut(rel, "/")
	return nix.StorePath(storeDir, storeDir+"/"+top)
}

// checkValid refuses paths the Nix database does not register as valid, at
// once rather than when the daemon gets to them.
func checkValid(ctx context.Context, paths []string) error {
	_, bad, err := (&nix.Client{}).CheckValidity(ctx, paths)
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return fmt.Errorf("%s is not a valid path in the Nix store (not built, or garbage-collected); build it first", strings.Join(bad, ", "))
	}
	return nil
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, socket := clientFlags("status", stderr)
	asJSON := fs.Bool("json", false, "print JSON for machines")
	if !parseNoArgs(fs, args) {
		return 2
	}
	st, err := client.New(*socket).Status(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "nixpush status: %v\n", explain(err))
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(st)
		return 0
	}
	printStatus(stdout, st, time.Now())
	return 0
}

func printStatus(w io.Writer, st api.Status, now time.Time) {
	fmt.Fprintln(w, st.Line(now))
	sc := st.StoreCheck
	switch {
	case sc.OK:
		fmt.Fprintf(w, "store:    %s: ok (checked %s ago)\n", st.Store, now.Sub(*sc.CheckedAt).Round(time.Second))
	case sc.Error != "":
		fmt.Fprintf(w, "store:    %s: FAILING: %s\n          fix: %s\n", st.Store, sc.Error, sc.Fix)
	default:
		fmt.Fprintf(w, "store:    %s: being checked\n", st.Store)
	}
	if t := st.Traffic; t != nil {
		fmt.Fprintf(w, "traffic:  %s\n", trafficLine(t, now))
	}
	oldest := ""
	if st.OldestQueued != nil {
		oldest = fmt.Sprintf(" (oldest %s ago)", now.Sub(*st.OldestQueued).Round(time.Second))
	}
	if st.QueueError != "" {
		fmt.Fprintf(w, "QUEUE     %s (since %s); free space on the state disk\n", st.QueueError, st.QueueErrorSince.Format(time.DateTime))
	}
	if st.GCSettings != "" {
		fmt.Fprintf(w, "GC        settings do not fit gc's: %s; every push checks every path until they do\n", st.GCSettings)
	}
	if st.Held > 0 {
		fmt.Fprintf(w, "held:     %d path(s) the queue could not take, held in memory until it can\n", st.Held)
	}
	if st.Spooled > 0 {
		fmt.Fprintf(w, "spooled:  %d request(s) waiting to be imported\n", st.Spooled)
	}
	if p := st.Progress; p.Since != nil {
		fmt.Fprintf(w, "progress: %d/%d paths, %s/%s NAR uploaded, %d already in the cache, since %s\n",
			p.PathsDone, p.Paths, api.Bytes(p.NarBytesDone), api.Bytes(p.NarBytes), p.Cached, p.Since.Format(time.DateTime))
	}
	fmt.Fprintf(w, "queued:   %d%s\n", st.Queued, oldest)
	fmt.Fprintf(w, "active:   %d\n", st.Active)
	fmt.Fprintf(w, "failed:   %d\n", st.Failed)
	fmt.Fprintf(w, "done:     %d\n", st.Done)
	fmt.Fprintf(w, "uploaded: %d paths, %s NAR, %s compressed, %d already cached, since %s; now %s/s\n",
		st.Uploaded.Paths, api.Bytes(st.Uploaded.NarBytes), api.Bytes(st.Uploaded.FileBytes), st.Uploaded.Skipped,
		st.Uploaded.Since.Format(time.DateTime), api.Bytes(int64(st.Uploaded.NarBytesPerSecond)))
	fmt.Fprintf(w, "also:     %d build logs, %d realisations uploaded; %d paths filtered (--exclude, --skip-signed-by)\n",
		st.Uploaded.Logs, st.Uploaded.Realisations, st.Uploaded.Filtered)
	for _, f := range st.Failures {
		fmt.Fprintf(w, "FAILED    %s (%d attempts): %s%s\n", f.Path, f.Attempts, f.Error, healNote(f))
	}
	fmt.Fprintf(w, "daemon:   nixpush %s\n", st.Version)
}

func runRetry(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, socket := clientFlags("retry", stderr)
	all := fs.Bool("all", false, "re-queue every failed item")
	storeDir := fs.String("store-dir", envOr("NIX_STORE_DIR", nix.DefaultStoreDir), "the Nix store directory")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *all == (fs.NArg() > 0) {
		fmt.Fprintln(stderr, "nixpush retry: give --all or the failed paths (nixpush status lists them), not both")
		return 2
	}
	req := api.RetryRequest{All: *all}
	for _, a := range fs.Args() {
		// A derivation's items keep their suffix: x.drv#log, x.drv^*.
		base, suffix := a, ""
		if i := strings.IndexAny(a, "#^"); i >= 0 {
			base, suffix = a[:i], a[i:]
		}
		p, err := nix.StorePath(*storeDir, base)
		if err != nil {
			fmt.Fprintf(stderr, "nixpush retry: %v\n", err)
			return 2
		}
		req.Paths = append(req.Paths, p+suffix)
	}
	res, err := client.New(*socket).Retry(ctx, req)
	if err != nil {
		fmt.Fprintf(stderr, "nixpush retry: %v\n", explain(err))
		return 1
	}
	fmt.Fprintf(stdout, "re-queued %d item(s)\n", res.Requeued)
	return 0
}

func runWait(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, socket := clientFlags("wait", stderr)
	timeout := fs.Duration("timeout", 0, "give up after this long (0: no limit)")
	if !parseNoArgs(fs, args) {
		return 2
	}
	if *timeout < 0 {
		fmt.Fprintf(stderr, "nixpush wait: --timeout %s: want a duration such as 30m, or 0 for no limit\n", *timeout)
		return 2
	}
	return waitDrained(ctx, client.New(*socket), *timeout, time.Time{}, stdout, stderr)
}

// waitDrained waits until nothing is queued or active: 0 when nothing has
// failed either, 1 listing failures, 3 on timeout. On a terminal it shows
// live progress of the work started after since (any, when zero); it ends
// with a summary in paths and bytes.
func waitDrained(ctx context.Context, c *client.Client, timeout time.Duration, since time.Time, stdout, stderr io.Writer) int {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	if f, ok := stdout.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		stop := showProgress(ctx, c, since, stdout)
		defer stop()
		stdout = &afterProgress{w: stdout, stop: stop}
		stderr = &afterProgress{w: stderr, stop: stop}
	}
	for {
		step := 5 * time.Minute
		if dl, ok := ctx.Deadline(); ok {
			// Not below 0: the deadline may pass between the last answer
			// and here (a busy machine), and the daemon refuses a
			// negative timeout; 0 answers at once, then ctx says so.
			step = max(0, min(step, time.Until(dl)))
		}
		st, err := c.Wait(ctx, step)
		if err != nil {
			if ctx.Err() != nil {
				st, err = c.Status(context.Background())
				if err == nil {
					fmt.Fprintf(stderr, "nixpush wait: timed out after %s: %s\n", timeout, st.Line(time.Now()))
					return 3
				}
			}
			fmt.Fprintf(stderr, "nixpush wait: %v\n", explain(err))
			return 1
		}
		if !st.Drained {
			if ctx.Err() != nil {
				fmt.Fprintf(stderr, "nixpush wait: timed out after %s: %s\n", timeout, st.Line(time.Now()))
				return 3
			}
			continue
		}
		if st.Failed > 0 {
			fmt.Fprintln(stdout, summary(st, since))
			fmt.Fprintf(stderr, "nixpush wait: %d path(s) failed (fix the cause, then: nixpush retry --all):\n", st.Failed)
			for _, f := range st.Failures {
				fmt.Fprintf(stderr, "  %s: %s%s\n", f.Path, f.Error, healNote(f))
			}
			return 1
		}
		fmt.Fprintln(stdout, summary(st, since))
		return 0
	}
}

// healNote says that a failure heals by itself.
func healNote(f api.Failure) string {
	if f.Class == "store" {
		return " (queued again by itself once the store check passes)"
	}
	return ""
}

// explain adds the usual fix to an unreachable daemon.
func explain(err error) error {
	if api.IsAPIError(err) {
		return err
	}
	if errors.Is(err, os.ErrNotExist) || strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "no such file") {
		return fmt.Errorf("%w; is nixpush daemon running? (systemctl status nixpush, or pass --socket)", err)
	}
	return err
}

// trafficLine says how requests to the store go: throttling and the
// concurrency it left, the upload rate and its cap.
func trafficLine(t *api.Traffic, now time.Time) string {
	rate := api.Bytes(int64(t.UploadRate)) + "/s"
	if t.UploadRateCap > 0 {
		rate += " (cap " + api.Bytes(t.UploadRateCap) + "/s"
	} else {
		rate += " (no cap"
	}
	if t.UploadRateCapNextAt != nil {
		next := "no cap"
		if t.UploadRateCapNext > 0 {
			next = api.Bytes(t.UploadRateCapNext) + "/s"
		}
		in := strings.TrimSuffix(t.UploadRateCapNextAt.Sub(now).Round(time.Minute).String(), "0s")
		rate += fmt.Sprintf("; %s from %s, in %s", next, t.UploadRateCapNextAt.Local().Format("15:04"), in)
	}
	rate += ")"
	if t.UploadRateSchedule != "" {
		rate += " by the schedule " + t.UploadRateSchedule
	}
	conc := fmt.Sprintf("%d/%d requests at once, %d in flight", t.Concurrency, t.MaxConcurrency, t.InFlight)
	switch {
	case t.Throttling:
		return fmt.Sprintf("STORE THROTTLING (503 SlowDown/429: %d answers, last %s ago); %s; upload %s",
			t.Throttled, now.Sub(*t.LastThrottled).Round(time.Second), conc, rate)
	case t.Throttled > 0:
		return fmt.Sprintf("%s; upload %s; %d throttling answers, last at %s", conc, rate, t.Throttled, t.LastThrottled.Format(time.DateTime))
	}
	return fmt.Sprintf("%s; upload %s", conc, rate)
}
