package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-isatty"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/retention"
	"github.com/nixpush/nixpush/store"
)

// bucketFlags are the flags of the commands that work on the bucket
// directly (gc, verify, pin, unpin, pins): the daemon's store flags.
type bucketFlags struct {
	storeURI, caCert, cacheDir *string
}

func addBucketFlags(fs *flag.FlagSet) bucketFlags {
	cacheDir, _ := os.UserCacheDir()
	if cacheDir != "" {
		cacheDir += "/nixpush"
	}
	return bucketFlags{
		storeURI: fs.String("store-uri", os.Getenv("NIXPUSH_STORE_URI"), "binary cache: s3://BUCKET?endpoint=HOST&scheme=http|https&region=R&profile=P or file:///DIR (env NIXPUSH_STORE_URI)"),
		caCert:   fs.String("ca-certificate", "", "PEM file of a private CA that signed the S3 endpoint's certificate"),
		cacheDir: fs.String("cache-dir", envOr("CACHE_DIRECTORY", cacheDir), "where to remember the .narinfos read, by ETag, so the next walk reads only what changed (env CACHE_DIRECTORY)"),
	}
}

func (f bucketFlags) open(ctx context.Context, cmd string) (store.Bucket, error) {
	walkMemoryPolicy()
	if *f.storeURI == "" {
		return nil, fmt.Errorf("--store-uri is required (or NIXPUSH_STORE_URI), e.g. nixpush %s --store-uri 's3://nix-cache?endpoint=minio.lan:9000&scheme=http'", cmd)
	}
	if u, err := url.Parse(*f.storeURI); err == nil && u.Scheme == "file" && u.Path != "" {
		// Opening a file:// store makes its directory: a mistyped one
		// would read as an empty cache.
		if _, err := os.Stat(u.Path); os.IsNotExist(err) {
			return nil, fmt.Errorf("--store-uri %s: no such directory; prepare a cache there first: nixpush init --store-uri %s", *f.storeURI, *f.storeURI)
		}
	}
	s, err := store.Open(ctx, *f.storeURI, store.Options{CACertFile: *f.caCert})
	if err != nil {
		return nil, err
	}
	b, ok := store.As[store.Bucket](s)
	if !ok {
		return nil, fmt.Errorf("%s cannot be listed", s)
	}
	return b, nil
}

// walkGCPercent is the collector's target for the commands that walk the
// bucket: the heap may grow to 1.25x what is live, not 2x.
const walkGCPercent = 25

// walkMemoryPolicy sets the collector for a walk of the whole bucket.
// Not the daemon's 40 MiB soft limit: a walk's live heap is its graph,
// which grows with the cache (some 30 MiB at 100,000 paths, 300 at a
// million), and under a limit below it the collector runs without pause
// (a 100,000-path dry run: 98 s and 447 cycles under it, 16 s and 28
// cycles without). No limit then, and GOGC 25 instead of 100: the graph
// holds no pointers (chunks of plain structs, bytes and int32s), so a
// cycle marks little whatever its size, and cycles four times as often
// cost little time for a peak RSS a third lower (docs/gc-scale.md).
// GOMEMLIMIT and GOGC override either.
func walkMemoryPolicy() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(walkGCPercent)
	}
}

// writeGCJSON writes rep as indented JSON, as json.Encoder would, but
// writes the deleted paths (a few hundred thousand of a million-path
// cache) one at a time rather than building the whole text in memory.
func writeGCJSON(w io.Writer, rep *retention.GCReport) error {
	const mark = "\x00deleted paths\x00"
	paths := rep.Deleted.Paths
	shell := *rep
	shell.Deleted.Paths = []string{mark}
	text, err := json.MarshalIndent(&shell, "", "  ")
	if err != nil {
		return err
	}
	quoted, _ := json.Marshal(mark)
	at := bytes.Index(text, quoted)
	if at < 0 {
		return errors.New("gc report: no place for the deleted paths")
	}
	indent := text[bytes.LastIndexByte(text[:at], '\n')+1 : at]  // of an element
	head, tail := text[:at-len(indent)-1], text[at+len(quoted):] // head ends in "[", tail starts "\n  ]"
	bw := bufio.NewWriterSize(w, 64<<10)
	bw.Write(head)
	if len(paths) == 0 {
		bw.WriteString("]")
		tail = tail[bytes.IndexByte(tail, ']')+1:]
	}
	for k, p := range paths {
		if k > 0 {
			bw.WriteByte(',')
		}
		bw.WriteByte('\n')
		bw.Write(indent)
		q, _ := json.Marshal(p)
		bw.Write(q)
	}
	bw.Write(tail)
	bw.WriteByte('\n')
	return bw.Flush()
}

// cache opens the walk cache of b, or runs without one (with a warning).
func (f bucketFlags) cache(b store.Bucket, stderr io.Writer, cmd string) *retention.Cache {
	if *f.cacheDir == "" {
		return nil
	}
	c, err := retention.OpenCache(retention.CacheFile(*f.cacheDir, b.String()))
	if err != nil {
		fmt.Fprintf(stderr, "nixpush %s: warning: %v; reading every .narinfo\n", cmd, err)
		return nil
	}
	return c
}

// progress prints walk figures on a terminal, on one rewritten line.
func progress(stderr io.Writer, what string) (func(retention.WalkStats), func()) {
	f, ok := stderr.(*os.File)
	if !ok || !isatty.IsTerminal(f.Fd()) {
		return nil, func() {}
	}
	return func(s retention.WalkStats) {
			fmt.Fprintf(stderr, "\r%s: listed %d objects, %d .narinfos (%d read, %d remembered), %d requests\x1b[K", what, s.Objects, s.NarInfos, s.Read, s.CacheHits, s.Requests)
		}, func() {
			fmt.Fprint(stderr, "\r\x1b[K")
		}
}

var daysRE = regexp.MustCompile(`^(\d+)d(.*)$`)

// parseAge reads a Go duration or a number of days: 30d, 1d12h.
func parseAge(s string) (time.Duration, error) {
	var d time.Duration
	rest := s
	if m := daysRE.FindStringSubmatch(s); m != nil {
		n, err := strconv.Atoi(m[1])
		if err != nil {
			return 0, fmt.Errorf("duration %q: %v", s, err)
		}
		d, rest = time.Duration(n)*24*time.Hour, m[2]
		if rest == "" {
			return d, nil
		}
	}
	e, err := time.ParseDuration(rest)
	if err != nil || e < 0 {
		return 0, fmt.Errorf("duration %q: want e.g. 30d, 36h or 1d12h", s)
	}
	return d + e, nil
}

type ageFlag struct{ d *time.Duration }

func (a ageFlag) String() string {
	if a.d == nil {
		return ""
	}
	if *a.d%(24*time.Hour) == 0 && *a.d >= 48*time.Hour {
		return fmt.Sprintf("%dd", *a.d/(24*time.Hour))
	}
	s := a.d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func (a ageFlag) Set(s string) error {
	d, err := parseAge(s)
	if err == nil {
		*a.d = d
	}
	return err
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

func runGC(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixpush gc", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bf := addBucketFlags(fs)
	olderThan, grace := 30*24*time.Hour, 24*time.Hour
	fs.Var(ageFlag{&olderThan}, "older-than", "keep the closures of roots pushed within this long (30d, 36h, ...)")
	fs.Var(ageFlag{&grace}, "grace", "never delete what was written within this long: pushes in progress")
	window := fs.Duration("sweep-window", retention.DefaultWindow, "delete only within this long of listing; a longer sweep lists again (five listings in all), then stops and asks to run gc again")
	dryRun := fs.Bool("dry-run", false, "print what would be deleted; delete nothing")
	asJSON := fs.Bool("json", false, "print JSON for machines")
	singleGC := fs.Bool("single-gc", false, singleGCHelp)
	if !parseNoArgs(fs, args) {
		return 2
	}
	if err := checkGCSettings(olderThan, grace, *window); err != nil {
		fmt.Fprintf(stderr, "nixpush gc: %v\n", err)
		return 2
	}
	b, err := bf.open(ctx, "gc")
	if err != nil {
		fmt.Fprintf(stderr, "nixpush gc: %v\n", err)
		return 2
	}
	cache := bf.cache(b, stderr, "gc")
	defer cache.Close()
	start := time.Now()
	show, clear := progress(stderr, "gc")
	opts := retention.GCOptions{OlderThan: olderThan, Grace: grace, Window: *window, DryRun: *dryRun, Host: hostname(), SingleGC: *singleGC,
		Walk: retention.WalkOptions{Cache: cache, Progress: show}}
	if show != nil {
		gcProgress(stderr, &opts)
	}
	rep, err := retention.GC(ctx, b, opts)
	// A sweep longer than its window stopped deleting at the deadline;
	// what it deleted is gone for good, so a new listing has less to do.
	for tries := 1; errors.Is(err, retention.ErrWindowPassed) && tries < 5; tries++ {
		clear()
		fmt.Fprintf(stderr, "nixpush gc: %v; listing again (%d of 5)\n", err, tries+1)
		rep, err = retention.GC(ctx, b, opts)
	}
	clear()
	if err != nil {
		fmt.Fprintf(stderr, "nixpush gc: %v\n", err)
		if errors.Is(err, retention.ErrSweepRunning) {
			return 3
		}
		return 1
	}
	for _, w := range rep.Warnings {
		fmt.Fprintf(stderr, "nixpush gc: warning: %s\n", w)
	}
	if *asJSON {
		if err := writeGCJSON(stdout, rep); err != nil {
			fmt.Fprintf(stderr, "nixpush gc: %v\n", err)
			return 1
		}
		return 0
	}
	printGC(stdout, rep, olderThan, grace, start)
	return 0
}

// gcProgress shows the marking and the deletions on one rewritten line.
func gcProgress(stderr io.Writer, opts *retention.GCOptions) {
	kept, toDelete, deleting, last := 0, 0, 0, time.Time{}
	opts.Marked = func(k, d int) {
		kept, toDelete = k, d
		fmt.Fprintf(stderr, "\rgc: marked %d paths kept, %d objects to delete\x1b[K", kept, toDelete)
	}
	opts.Deleting = func(key string) {
		if deleting++; time.Since(last) > 200*time.Millisecond || deleting == toDelete {
			last = time.Now()
			fmt.Fprintf(stderr, "\rgc: %d paths kept; deleted %d of %d objects (%s)\x1b[K", kept, deleting, toDelete, key)
		}
	}
}

// printGC prints what gc deleted (or would), kept and walked.
func printGC(stdout io.Writer, rep *retention.GCReport, olderThan, grace time.Duration, start time.Time) {
	verb := "deleted"
	if rep.DryRun {
		verb = "would delete"
	}
	for _, p := range rep.Deleted.Paths {
		fmt.Fprintf(stdout, "%s %s\n", verb, p)
	}
	fmt.Fprintf(stdout, "kept:     %d paths (closures of %d pins, %d roots pushed within %s, %d .narinfos written within %s), %d NARs, %s\n",
		rep.Kept.Paths, rep.Kept.Pinned, rep.Kept.Rooted, ageFlag{&olderThan}, rep.Kept.InGrace, ageFlag{&grace}, rep.Kept.NARs, api.Bytes(rep.Kept.Bytes))
	fmt.Fprintf(stdout, "%s: %d paths, %d NARs, %s, %d NAR listings, %d build logs, %d realisations, %d root records, %d pending uploads (%d kept to resume)\n", verb,
		len(rep.Deleted.Paths), rep.Deleted.NARs, api.Bytes(rep.Deleted.Bytes), rep.Deleted.Listings, rep.Deleted.Logs, rep.Deleted.Realisations,
		rep.Deleted.RootRecords, rep.Deleted.Uploads, rep.Kept.Uploads)
	fmt.Fprintf(stdout, "walked:   %d objects, %d .narinfos read, %d remembered; %d requests; %s\n", rep.Walk.Objects, rep.Walk.Read, rep.Walk.CacheHits, rep.Requests,
		time.Since(start).Round(100*time.Millisecond))
}

const singleGCHelp = "only one gc or repair ever runs on this store: skip the conditional-write check"

// checkGCSettings refuses gc settings under which it could delete what a
// push in progress needs, or a root pushed again while daemons trust it.
func checkGCSettings(olderThan, grace, window time.Duration) error {
	switch {
	case grace <= 0:
		return fmt.Errorf("--grace %s: must be above zero: it alone keeps a push in progress (its NARs and .narinfos before its root is written); use the default 24h, or at least a push's longest duration", ageFlag{&grace})
	case olderThan < grace:
		return fmt.Errorf("--older-than %s is below --grace %s: a root pushed again would keep its closure for less time than daemons may trust it; set --older-than to at least %s", ageFlag{&olderThan}, ageFlag{&grace}, ageFlag{&grace})
	case window <= 0:
		return fmt.Errorf("--sweep-window %s: must be above zero: gc deletes only within it after listing; use the default %s", window, retention.DefaultWindow)
	}
	return nil
}

func runPin(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixpush pin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bf := addBucketFlags(fs)
	storeDir := fs.String("store-dir", envOr("NIX_STORE_DIR", nix.DefaultStoreDir), "the Nix store directory")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 2 {
		fmt.Fprintln(stderr, "nixpush pin: usage: nixpush pin [--store-uri URI] NAME PATH (e.g. nixpush pin release-24.05 ./result)")
		return 2
	}
	name := fs.Arg(0)
	if err := layout.CheckPinName(name); err != nil {
		fmt.Fprintf(stderr, "nixpush pin: %v\n", err)
		return 2
	}
	p, err := resolveStorePath(*storeDir, fs.Arg(1))
	if err != nil {
		fmt.Fprintf(stderr, "nixpush pin: %v\n", err)
		return 2
	}
	b, err := bf.open(ctx, "pin")
	if err != nil {
		fmt.Fprintf(stderr, "nixpush pin: %v\n", err)
		return 2
	}
	if err := retention.AddPin(ctx, b, name, p, time.Now()); err != nil {
		fmt.Fprintf(stderr, "nixpush pin: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "pinned %s as %s: gc keeps its closure until nixpush unpin %s\n", p, name, name)
	return 0
}

func runUnpin(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixpush unpin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bf := addBucketFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "nixpush unpin: usage: nixpush unpin [--store-uri URI] NAME (nixpush pins lists them)")
		return 2
	}
	b, err := bf.open(ctx, "unpin")
	if err != nil {
		fmt.Fprintf(stderr, "nixpush unpin: %v\n", err)
		return 2
	}
	if err := retention.RemovePin(ctx, b, fs.Arg(0)); err != nil {
		fmt.Fprintf(stderr, "nixpush unpin: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "unpinned %s: gc keeps its closure while a root or another pin needs it\n", fs.Arg(0))
	return 0
}

func runPins(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixpush pins", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bf := addBucketFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON for machines")
	if !parseNoArgs(fs, args) {
		return 2
	}
	b, err := bf.open(ctx, "pins")
	if err != nil {
		fmt.Fprintf(stderr, "nixpush pins: %v\n", err)
		return 2
	}
	pins, err := retention.Pins(ctx, b)
	if err != nil {
		fmt.Fprintf(stderr, "nixpush pins: %v\n", err)
		return 1
	}
	if *asJSON {
		type pinJSON struct {
			Name string `json:"name"`
			layout.Pin
		}
		out := make([]pinJSON, 0, len(pins))
		for _, p := range pins {
			out = append(out, pinJSON{p.Name, p})
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(out)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPATH\tPINNED")
	for _, p := range pins {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Name, p.Path, p.PinnedAt.Local().Format(time.DateTime))
	}
	tw.Flush()
	return 0
}
