package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/nixpush/nixpush/internal/testenv"
)

type verifyResult struct {
	Paths    int `json:"paths"`
	Problems []struct {
		Path, Kind, Detail string
	} `json:"problems"`
	Unrepairable []string `json:"unrepairable"`
	After        *struct {
		Paths    int               `json:"paths"`
		Problems []json.RawMessage `json:"problems"`
	} `json:"after_repair"`
}

func runVerify(t *testing.T, env []string, cacheDir string, args ...string) (verifyResult, error) {
	t.Helper()
	out, err := bucketCLI(t, env, cacheDir, append([]string{"verify", "--json"}, args...)...)
	var res verifyResult
	if jerr := json.Unmarshal([]byte(out), &res); jerr != nil {
		t.Fatalf("verify --json: %v (%v)\n%s", jerr, err, out)
	}
	return res, err
}

// TestVerify: a clean cache passes (and fails for a key that did not sign
// it); after a NAR is deleted, a referenced path's .narinfo is deleted and
// a NAR is corrupted (same size: only --full sees it), verify reports each
// and exits non-zero; verify --repair makes the cache whole again, for
// verify and for real Nix.
func TestVerify(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-verify-1", onBucket("verify"))
	_, otherPub := keys(t, "nixpush-e2e-verify-1")
	nx, pub, d := f.nx, f.pub, f.d
	uri, env, c := f.uri, f.env, f.client()
	cacheDir := t.TempDir()
	ctx := context.Background()

	tip := nx.Build(t, testenv.Chain(seed(), 8))[0]
	if o, err := d.CLI("push", "--wait", tip); err != nil {
		t.Fatalf("push: %v\n%s", err, o)
	}
	byName := make(map[string]string)
	for _, p := range closureOf(t, nx, tip) {
		byName[filepath.Base(p)[33:]] = p
	}
	pubArg := strings.TrimSpace(pub)
	if res, err := runVerify(t, env, cacheDir, "--store-uri", uri, "--public-key", pubArg, "--full"); err != nil || len(res.Problems) != 0 || res.Paths != 8 {
		t.Fatalf("verify of a clean cache: %v, %d paths, problems %+v", err, res.Paths, res.Problems)
	}
	if res, err := runVerify(t, env, cacheDir, "--store-uri", uri, "--public-key", strings.TrimSpace(otherPub)); err == nil || len(res.Problems) != 8 || res.Problems[0].Kind != "signature" {
		t.Fatalf("verify with a key that did not sign: %v, problems %+v; want 8 signature problems", err, res.Problems)
	}

	// The damage.
	narOf2 := narinfoURL(t, c, "verify", byName["chain-2"])
	if err := c.RemoveObject(ctx, "verify", narOf2, minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveObject(ctx, "verify", hashOf(byName["chain-4"])+".narinfo", minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	narOf6 := narinfoURL(t, c, "verify", byName["chain-6"])
	size := len(readObject(t, c, "verify", narOf6))
	junk := make([]byte, size)
	rand.Read(junk)
	if _, err := c.PutObject(ctx, "verify", narOf6, bytes.NewReader(junk), int64(size), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}

	want := map[string]string{byName["chain-2"]: "nar-missing", byName["chain-5"]: "reference-missing", byName["chain-6"]: "nar-hash"}
	check := func(res verifyResult, err error, full bool) {
		t.Helper()
		if err == nil {
			t.Fatalf("verify of a broken cache exited 0")
		}
		got := make(map[string]string)
		for _, p := range res.Problems {
			got[p.Path] = p.Kind
			t.Logf("reported: %s: %s: %s", p.Path, p.Kind, p.Detail)
		}
		for p, kind := range want {
			if kind == "nar-hash" && !full {
				if _, ok := got[p]; ok {
					t.Errorf("%s reported without --full: %s", p, got[p])
				}
				continue
			}
			if got[p] != kind {
				t.Errorf("%s: reported %q; want %q", p, got[p], kind)
			}
		}
		if n := len(want) - map[bool]int{true: 0, false: 1}[full]; len(got) != n {
			t.Errorf("%d paths reported; want %d", len(got), n)
		}
	}
	res, err := runVerify(t, env, cacheDir, "--store-uri", uri, "--public-key", pubArg)
	check(res, err, false)
	res, err = runVerify(t, env, cacheDir, "--store-uri", uri, "--public-key", pubArg, "--full")
	check(res, err, true)

	// Without a daemon to push them again, repair deletes nothing.
	before := objects(t, c, "verify")
	if _, err := runVerify(t, env, cacheDir, "--store-uri", uri, "--repair", "--socket", filepath.Join(t.TempDir(), "none.sock")); err == nil ||
		!strings.Contains(err.Error(), "nothing deleted") {
		t.Fatalf("verify --repair without a daemon: %v; want a refusal that deleted nothing", err)
	}
	if !mapsEqual(before, objects(t, c, "verify")) {
		t.Fatal("verify --repair without a daemon changed the bucket")
	}

	// The daemon that pushed the closure repairs it: the repair asks it to
	// check the cache again rather than trust what it pushed.
	res, err = runVerify(t, env, cacheDir, "--store-uri", uri, "--public-key", pubArg, "--full", "--repair", "--socket", d.Socket)
	if err != nil || res.After == nil || len(res.After.Problems) != 0 || len(res.Unrepairable) != 0 {
		t.Fatalf("verify --repair: %v; after: %+v, unrepairable %v\ndaemon log:\n%s", err, res.After, res.Unrepairable, d.Log)
	}
	if res, err := runVerify(t, env, cacheDir, "--store-uri", uri, "--public-key", pubArg, "--full"); err != nil || len(res.Problems) != 0 || res.Paths != 8 {
		t.Fatalf("verify after repair: %v, %d paths, problems %+v", err, res.Paths, res.Problems)
	}
	checkClosed(t, c, "verify", true)
	f.checkFetched(tip)
}
