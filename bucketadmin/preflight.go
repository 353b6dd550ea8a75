package bucketadmin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// CheckResult is one line of a preflight: what was checked and, when it
// failed, the classified error (whose Fix says what to do).
type CheckResult struct {
	Name string
	Note string            // a remark on a check that passed
	Err  *store.StoreError // nil: passed
}

// PreflightOptions say what a preflight may do.
type PreflightOptions struct {
	StoreDir string // the nix-cache-info StoreDir expected; "" means /nix/store
	Priority int    // for a nix-cache-info written here; 0 means 40
	// WriteCacheInfo writes nix-cache-info when the store lacks it, as the
	// daemon does before any upload; otherwise its absence fails the check
	// (nixpush check: run nixpush init).
	WriteCacheInfo bool
	// Probe names the probe object (default: the host name), so
	// builders sharing a bucket do not trip over each other.
	Probe string
}

// Preflight checks that store can serve as the cache, in order, stopping at
// the first failure: endpoint reachable, credentials accepted, bucket
// present, write allowed (a probe object put and deleted under
// nixpush/preflight/), nix-cache-info present with the right StoreDir.
func Preflight(ctx context.Context, st store.Store, opts PreflightOptions) []CheckResult {
	if opts.StoreDir == "" {
		opts.StoreDir = "/nix/store"
	}
	if opts.Priority == 0 {
		opts.Priority = 40
	}
	if opts.Probe == "" {
		opts.Probe, _ = os.Hostname()
		if opts.Probe == "" {
			opts.Probe = "nixpush"
		}
	}
	out, ok := checkReach(ctx, st)
	if !ok {
		return out
	}
	res, ok := checkWrite(ctx, st, opts.Probe)
	out = append(out, res)
	if !ok {
		return out
	}
	return append(out, checkCacheInfo(ctx, st, opts))
}

// failed is the failed check name: err, classified, or else as otherwise.
func failed(name string, err error, otherwise store.StoreProblem) CheckResult {
	se := store.AsStoreError(err)
	if se == nil {
		se = &store.StoreError{Problem: otherwise, Err: err}
	}
	return CheckResult{Name: name, Err: se}
}

// checkReach is the checks of reaching the store: one request tells which
// of the first three failed; the ones before it passed. False when one
// failed.
func checkReach(ctx context.Context, st store.Store) ([]CheckResult, bool) {
	_, isS3 := store.As[*store.S3Store](st)
	steps := []struct {
		name    string
		problem store.StoreProblem
	}{{"endpoint reachable", store.Certificate}, {"credentials accepted", store.Credentials}, {"bucket present", store.NoBucket}}
	if !isS3 {
		steps = steps[2:]
		steps[0].name = "cache directory present"
	}
	var err error
	if c, ok := store.As[store.Checker](st); ok {
		err = c.Check(ctx)
	}
	se := store.AsStoreError(err)
	if err != nil && se == nil {
		se = &store.StoreError{Problem: store.Unreachable, Err: err} // a 5xx, say: the server is not serving
	}
	var out []CheckResult
	for i, st := range steps {
		if se == nil {
			out = append(out, CheckResult{Name: st.name})
			continue
		}
		owns := se.Problem == st.problem || (i == 0 && (se.Problem == store.Unreachable || se.Problem == store.NotWritable))
		if !owns && i < len(steps)-1 {
			out = append(out, CheckResult{Name: st.name})
			continue
		}
		return append(out, CheckResult{Name: st.name, Err: se}), false
	}
	return out, true
}

// checkWrite puts and deletes a probe object; false when the put failed.
func checkWrite(ctx context.Context, st store.Store, probe string) (CheckResult, bool) {
	key := layout.PreflightPrefix + probe
	text := "nixpush preflight write check\n"
	if err := st.Put(ctx, key, strings.NewReader(text), int64(len(text)), "text/plain"); err != nil {
		return failed("write allowed", err, store.NotWritable), false
	}
	res := CheckResult{Name: "write allowed"}
	if d, ok := store.As[store.Deleter](st); ok {
		if err := d.Delete(ctx, key); err != nil {
			// Not fatal: the cache works; the probe is overwritten next time.
			res.Note = "the probe object " + key + " could not be deleted (" + err.Error() + "); allow s3:DeleteObject on " + layout.PreflightPrefix + "* (nixpush init --print-policy)"
		}
	}
	return res, true
}

// checkCacheInfo checks nix-cache-info, writing it when it is missing and
// opts say to.
func checkCacheInfo(ctx context.Context, st store.Store, opts PreflightOptions) CheckResult {
	b, err := st.Get(ctx, "nix-cache-info")
	switch {
	case errors.Is(err, store.ErrNotExist) && opts.WriteCacheInfo:
		text := nix.CacheInfo(opts.StoreDir, opts.Priority)
		if err := st.Put(ctx, "nix-cache-info", strings.NewReader(text), int64(len(text)), "text/x-nix-cache-info"); err != nil {
			return failed("nix-cache-info", err, store.NotWritable)
		}
		return CheckResult{Name: "nix-cache-info", Note: "written (StoreDir: " + opts.StoreDir + ")"}
	case errors.Is(err, store.ErrNotExist):
		return CheckResult{Name: "nix-cache-info", Err: &store.StoreError{Problem: store.NoCacheInfo,
			Err: fmt.Errorf("%s has no nix-cache-info; Nix will not use it as a cache", st)}}
	case err != nil:
		return failed("nix-cache-info", err, store.Unreachable)
	}
	if dir := cacheInfoStoreDir(string(b)); dir != opts.StoreDir {
		return CheckResult{Name: "nix-cache-info", Err: &store.StoreError{Problem: store.CacheInfoMismatch,
			Err: fmt.Errorf("%s: nix-cache-info says StoreDir: %s; this machine's store is %s", st, dir, opts.StoreDir)}}
	}
	return CheckResult{Name: "nix-cache-info", Note: "StoreDir: " + opts.StoreDir}
}

// PreflightError is the first failure of a preflight, or nil.
func PreflightError(results []CheckResult) *store.StoreError {
	for _, r := range results {
		if r.Err != nil {
			return r.Err
		}
	}
	return nil
}

func cacheInfoStoreDir(text string) string {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, "StoreDir:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
