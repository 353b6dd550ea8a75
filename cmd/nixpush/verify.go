package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/retention"
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

// verifyFlags are nixpush verify's flags.
type verifyFlags struct {
	bucket               bucketFlags
	keys                 stringsFlag
	full, repair, asJSON bool
	singleGC             bool
	excludes, skipSigned stringsFlag
	storeDir, socket     string
	timeout              time.Duration
}

func parseVerifyFlags(args []string, stderr io.Writer) (*verifyFlags, bool) {
	fs := flag.NewFlagSet("nixpush verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &verifyFlags{bucket: addBucketFlags(fs)}
	fs.Var(&f.keys, "public-key", "a key whose signature each .narinfo must carry: NAME:BASE64 or a file (repeatable; none: signatures are not checked)")
	fs.BoolVar(&f.full, "full", false, "download every NAR and check its hash and size")
	fs.BoolVar(&f.repair, "repair", false, "delete the broken .narinfos (and those referring to them) and have the daemon push again what the local Nix store holds")
	fs.Var(&f.excludes, "exclude", "references whose name (after the hash) matches this regular expression may be missing: the daemon's --exclude (repeatable)")
	fs.Var(&f.skipSigned, "skip-signed-by", "references the local Nix database holds a signature of by this key name may be missing: the daemon's --skip-signed-by (repeatable)")
	fs.StringVar(&f.storeDir, "store-dir", envOr("NIX_STORE_DIR", nix.DefaultStoreDir), "the Nix store directory")
	fs.StringVar(&f.socket, "socket", envOr("NIXPUSH_SOCKET", api.DefaultSocket), "daemon socket, for --repair (env NIXPUSH_SOCKET)")
	fs.DurationVar(&f.timeout, "timeout", time.Hour, "with --repair, how long to wait for the daemon to push again")
	fs.BoolVar(&f.asJSON, "json", false, "print JSON for machines")
	fs.BoolVar(&f.singleGC, "single-gc", false, singleGCHelp+" (with --repair)")
	return f, parseNoArgs(fs, args)
}

// options checks the flags and turns them into verify's options, before
// anything is opened.
func (f *verifyFlags) options(ctx context.Context) (retention.VerifyOptions, error) {
	opts := retention.VerifyOptions{Full: f.full}
	for _, k := range f.keys {
		pk, err := publicKey(k)
		if err != nil {
			return opts, err
		}
		opts.Keys = append(opts.Keys, pk)
	}
	if f.repair && f.timeout <= 0 {
		return opts, fmt.Errorf("--timeout %s: want a duration above 0, such as 1h (how long --repair waits for the daemon)", f.timeout)
	}
	filter, err := parseFilter(f.excludes, f.skipSigned)
	if err != nil {
		return opts, err
	}
	if !filter.Empty() {
		opts.Filtered = filteredRef(ctx, filter, f.storeDir)
	}
	return opts, nil
}

func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f, ok := parseVerifyFlags(args, stderr)
	if !ok {
		return 2
	}
	opts, err := f.options(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "nixpush verify: %v\n", err)
		return 2
	}
	b, err := f.bucket.open(ctx, "verify")
	if err != nil {
		fmt.Fprintf(stderr, "nixpush verify: %v\n", err)
		return 2
	}
	cache := f.bucket.cache(b, stderr, "verify")
	defer cache.Close()
	start := time.Now()
	show, clear := progress(stderr, "verify")
	opts.Walk = retention.WalkOptions{Cache: cache, Progress: show}
	if show != nil {
		opts.Checked = checkedProgress(stderr)
	}
	rep, err := retention.Verify(ctx, b, opts)
	clear()
	if err != nil {
		fmt.Fprintf(stderr, "nixpush verify: %v\n", err)
		return 1
	}
	res := verifyResult{VerifyReport: rep}
	if !f.asJSON {
		printVerify(stdout, rep)
		fmt.Fprintf(stdout, "walked:   %d objects, %d .narinfos read, %d remembered; %d requests; %s\n", rep.Walk.Objects, rep.Walk.Read, rep.Walk.CacheHits, rep.Requests,
			time.Since(start).Round(100*time.Millisecond))
	}
	var repairErr error
	if f.repair && !rep.Whole() {
		res.Unrepairable, res.After, repairErr = f.repairCache(ctx, b, rep, opts, stdout, stderr)
		if repairErr != nil {
			fmt.Fprintf(stderr, "nixpush verify: repair: %v\n", repairErr)
		}
	}
	if f.asJSON {
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

// verifyResult is what verify --json prints.
type verifyResult struct {
	*retention.VerifyReport
	Unrepairable []string                `json:"unrepairable,omitempty"`
	After        *retention.VerifyReport `json:"after_repair,omitempty"`
}

// checkedProgress shows the NARs checked on one rewritten line.
func checkedProgress(stderr io.Writer) func(done, total int, bytes int64) {
	last := time.Time{}
	return func(done, total int, bytes int64) {
		if time.Since(last) > 200*time.Millisecond || done == total {
			last = time.Now()
			fmt.Fprintf(stderr, "\rverify: checked %d of %d NARs (%s)\x1b[K", done, total, api.Bytes(bytes))
		}
	}
}

func printVerify(w io.Writer, rep *retention.VerifyReport) {
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "BROKEN %s: %s: %s\n", p.Path, p.Kind, p.Detail)
	}
	checked := ""
	if rep.NARs > 0 {
		checked = fmt.Sprintf("; %d NARs downloaded and hashed (%s)", rep.NARs, api.Bytes(rep.Bytes))
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
