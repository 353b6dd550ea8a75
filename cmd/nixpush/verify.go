package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/nixpush/nixpush/hook"
	"github.com/nixpush/nixpush/hook/client"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/retention"
	"github.com/nixpush/nixpush/store"
	"github.com/nixpush/nixpush/uploader"
)

// publicKey reads a key given as name:base64, or as a file holding one.
func publicKey(arg string) (signature.PublicKey, error) {
	text := arg
	if !strings.Contains(arg, ":") || strings.HasPrefix(arg, "/") || strings.HasPrefix(arg, ".") {
		b, err := os.ReadFile(arg)
		if err != nil {
			return signature.PublicKey{}, fmt.Errorf("--public-key %q: neither NAME:BASE64 nor a readable file: %v", arg, err)
		}
		text = string(b)
	}
	k, err := signature.ParsePublicKey(strings.TrimSpace(text))
	if err != nil {
		return signature.PublicKey{}, fmt.Errorf("--public-key %q: %v (want NAME:BASE64, as in trusted-public-keys)", arg, err)
	}
	return k, nil
}

func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixpush verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bf := addBucketFlags(fs)
	var keys stringsFlag
	fs.Var(&keys, "public-key", "a key whose signature each .narinfo must carry: NAME:BASE64 or a file (repeatable; none: signatures are not checked)")
	full := fs.Bool("full", false, "download every NAR and check its hash and size")
	repair := fs.Bool("repair", false, "delete the broken .narinfos (and those referring to them) and have the daemon push again what the local Nix store holds")
	var excludes, skipSignedBy stringsFlag
	fs.Var(&excludes, "exclude", "references whose name (after the hash) matches this regular expression may be missing: the daemon's --exclude (repeatable)")
	fs.Var(&skipSignedBy, "skip-signed-by", "references the local Nix database holds a signature of by this key name may be missing: the daemon's --skip-signed-by (repeatable)")
	storeDir := fs.String("store-dir", envOr("NIX_STORE_DIR", nix.DefaultStoreDir), "the Nix store directory")
	socket := fs.String("socket", envOr("NIXPUSH_SOCKET", hook.DefaultSocket), "daemon socket, for --repair (env NIXPUSH_SOCKET)")
	timeout := fs.Duration("timeout", time.Hour, "with --repair, how long to wait for the daemon to push again")
	asJSON := fs.Bool("json", false, "print JSON for machines")
	singleGC := fs.Bool("single-gc", false, singleGCHelp+" (with --repair)")
	if !parseNoArgs(fs, args) {
		return 2
	}
	opts := retention.VerifyOptions{Full: *full}
	for _, k := range keys {
		pk, err := publicKey(k)
		if err != nil {
			fmt.Fprintf(stderr, "nixpush verify: %v\n", err)
			return 2
		}
		opts.Keys = append(opts.Keys, pk)
	}
	exclude, err := uploader.ParseExclude(excludes)
	if err != nil {
		fmt.Fprintf(stderr, "nixpush verify: %v\n", err)
		return 2
	}
	if filter := (uploader.Filter{Exclude: exclude, SkipSignedBy: skipSignedBy}); !filter.Empty() {
		opts.Filtered = filteredRef(ctx, filter, *storeDir)
	}
	b, err := bf.open(ctx, "verify")
	if err != nil {
		fmt.Fprintf(stderr, "nixpush verify: %v\n", err)
		return 2
	}
	cache := bf.cache(b, stderr, "verify")
	defer cache.Close()
	start := time.Now()
	show, clear := progress(stderr, "verify")
	opts.Walk = retention.WalkOptions{Cache: cache, Progress: show}
	if show != nil {
		last := time.Time{}
		opts.Checked = func(done, total int, bytes int64) {
			if time.Since(last) > 200*time.Millisecond || done == total {
				last = time.Now()
				fmt.Fprintf(stderr, "\rverify: checked %d of %d NARs (%s)\x1b[K", done, total, hook.Bytes(bytes))
			}
		}
	}
	rep, err := retention.Verify(ctx, b, opts)
	clear()
	if err != nil {
		fmt.Fprintf(stderr, "nixpush verify: %v\n", err)
		return 1
	}
	type result struct {
		*retention.VerifyReport
		Unrepairable []string                `json:"unrepairable,omitempty"`
		After        *retention.VerifyReport `json:"after_repair,omitempty"`
	}
	res := result{VerifyReport: rep}
	if !*asJSON {
		printVerify(stdout, rep)
		fmt.Fprintf(stdout, "walked:   %d objects, %d .narinfos read, %d remembered; %d requests; %s\n", rep.Walk.Objects, rep.Walk.Read, rep.Walk.CacheHits, rep.Requests,
			time.Since(start).Round(100*time.Millisecond))
	}
	var repairErr error
	if *repair && !rep.Whole() {
		res.Unrepairable, res.After, repairErr = repairCache(ctx, b, rep, opts, *socket, *timeout, *singleGC, stdout, stderr, *asJSON)
		if repairErr != nil {
			fmt.Fprintf(stderr, "nixpush verify: repair: %v\n", repairErr)
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(res)
	}
	final := rep
	if res.After != nil {
		final = res.After
	}
	if !final.Whole() || len(res.Unrepairable) > 0 || repairErr != nil {
		return 1
	}
	return 0
}

func printVerify(w io.Writer, rep *retention.VerifyReport) {
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "BROKEN %s: %s: %s\n", p.Path, p.Kind, p.Detail)
	}
	checked := ""
	if rep.NARs > 0 {
		checked = fmt.Sprintf("; %d NARs downloaded and hashed (%s)", rep.NARs, hook.Bytes(rep.Bytes))
	}
	if rep.Whole() {
		fmt.Fprintf(w, "%s is whole: %d paths%s\n", rep.Store, rep.Paths, checked)
		return
	}
	dangling := ""
	if rep.Dangling > 0 {
		dangling = fmt.Sprintf("; %d realisations point at missing paths", rep.Dangling)
	}
	pins := 0
	for _, p := range rep.Problems {
		if p.Kind == retention.PinMissing {
			pins++
		}
	}
	if pins > 0 {
		dangling += fmt.Sprintf("; %d pins keep nothing (push their paths again)", pins)
	}
	fmt.Fprintf(w, "%s: %d of %d paths broken%s%s; nixpush verify --repair deletes them and has the daemon push them again\n", rep.Store, rep.Broken, rep.Paths, dangling, checked)
}

// repairCache deletes the broken .narinfos (and their referrers), has the
// daemon push again those the local Nix store holds, waits, and verifies
// again. It returns the paths it could not push again.
func repairCache(ctx context.Context, b store.Bucket, rep *retention.VerifyReport, opts retention.VerifyOptions,
	socket string, timeout time.Duration, singleGC bool, stdout, stderr io.Writer, quiet bool) ([]string, *retention.VerifyReport, error) {
	say := func(format string, a ...any) {
		if !quiet {
			fmt.Fprintf(stdout, format, a...)
		}
	}
	// The daemon must be there to push again what goes: ask before
	// deleting anything.
	c := client.New(socket)
	if _, err := c.Status(ctx); err != nil && rep.Broken > 0 {
		return nil, nil, fmt.Errorf("nothing deleted: the daemon that would push the broken paths again does not answer: %w", explain(err))
	}
	repaired, err := retention.Repair(ctx, b, rep, retention.RepairOptions{Host: hostname(), SingleGC: singleGC})
	if err != nil {
		return nil, nil, err
	}
	for _, w := range repaired.Warnings {
		fmt.Fprintf(stderr, "nixpush verify: repair: warning: %s\n", w)
	}
	rep.Repair = repaired
	say("repair: deleted %d .narinfos (the broken paths and those referring to them) and %d bad NARs\n", len(repaired.Deleted), repaired.NARs)
	if repaired.Realisations > 0 {
		say("repair: deleted %d realisations pointing at missing paths; not pushed again (the daemon uploads a realisation only when the post-build hook hands it the derivation, after a build)\n", repaired.Realisations)
	}
	valid, invalid, err := localValidity(ctx, repaired.Deleted)
	if err != nil {
		return nil, nil, err
	}
	for _, p := range invalid {
		say("cannot repair %s: not in the local Nix store; push it from a machine that has it\n", p)
	}
	if len(valid) > 0 {
		say("repair: pushing %d paths again through the daemon (%s)\n", len(valid), socket)
		// Recheck: the daemon may believe the cache holds them still.
		if _, err := c.Enqueue(ctx, hook.EnqueueRequest{Paths: valid, Recheck: true}); err != nil {
			return invalid, nil, explain(err)
		}
		if err := waitQuiet(ctx, c, timeout); err != nil {
			return invalid, nil, err
		}
		// The daemon says it is done: check it did push them.
		for _, p := range valid {
			has, err := b.Has(ctx, nix.NarInfoKey(p))
			if err != nil {
				return invalid, nil, err
			}
			if !has {
				say("cannot repair %s: the daemon did not push it again; restart it and run nixpush push %s\n", p, p)
				invalid = append(invalid, p)
			}
		}
	}
	after, err := retention.Verify(ctx, b, retention.VerifyOptions{Keys: opts.Keys, Full: opts.Full, Filtered: opts.Filtered,
		Walk: retention.WalkOptions{Cache: opts.Walk.Cache}})
	if err != nil {
		return invalid, nil, err
	}
	if !quiet {
		fmt.Fprint(stdout, "after repair: ")
		printVerify(stdout, after)
	}
	return invalid, after, nil
}

// localValidity splits paths into those the local Nix store holds and
// the others.
// filteredRef says whether a missing reference (hash-name) is one the
// daemon, given filter, leaves out: by its name, or by the signatures the
// local Nix database holds of it (a path not in the local store has none).
func filteredRef(ctx context.Context, filter uploader.Filter, storeDir string) func(string) bool {
	c := &nix.Client{StoreDir: storeDir}
	return func(ref string) bool {
		info := nix.PathInfo{Path: storeDir + "/" + ref}
		if skip, _ := filter.Skips(info); skip {
			return true
		}
		if len(filter.SkipSignedBy) == 0 {
			return false
		}
		if infos, err := c.Query(ctx, []string{info.Path}); err == nil && len(infos) == 1 {
			info = infos[0]
		}
		skip, _ := filter.Skips(info)
		return skip
	}
}

func localValidity(ctx context.Context, paths []string) (valid, invalid []string, err error) {
	if len(paths) == 0 {
		return nil, nil, nil
	}
	cmd := exec.CommandContext(ctx, "nix-store", append([]string{"--check-validity", "--print-invalid", "--"}, paths...)...)
	out, err := cmd.Output()
	if err != nil {
		return nil, nil, fmt.Errorf("nix-store --check-validity: %v (is Nix installed?)", err)
	}
	bad := make(map[string]bool)
	for _, p := range strings.Fields(string(out)) {
		bad[p] = true
	}
	for _, p := range paths {
		if bad[p] {
			invalid = append(invalid, p)
		} else {
			valid = append(valid, p)
		}
	}
	return valid, invalid, nil
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
