package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/nixpush/nixpush/internal/testenv"
)

// onTop is a derivation referring to the output of expr.
func onTop(expr, name string) string {
	return fmt.Sprintf(`let t = %s; in derivation { name = %q; system = builtins.currentSystem;
  builder = "/bin/sh"; args = [ "-c" "echo ${t} > $out" ]; }`, expr, name)
}

func removeObjects(t *testing.T, c *minio.Client, bucket string, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if err := c.RemoveObject(context.Background(), bucket, k, minio.RemoveObjectOptions{}); err != nil {
			t.Fatalf("remove %s: %v", k, err)
		}
	}
}

// rootPushedAt reads the root record of p in the bucket.
func rootPushedAt(t *testing.T, c *minio.Client, bucket, p string) time.Time {
	t.Helper()
	obj, err := c.GetObject(context.Background(), bucket, "nixpush/roots/"+hashOf(p), minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	var r struct {
		Path     string    `json:"path"`
		PushedAt time.Time `json:"pushed_at"`
		Host     string    `json:"host"`
	}
	if err := json.NewDecoder(obj).Decode(&r); err != nil {
		t.Fatalf("root record of %s: %v", p, err)
	}
	if host, _ := os.Hostname(); r.Path != p || r.Host != host || r.PushedAt.IsZero() {
		t.Fatalf("root record of %s: %+v", p, r)
	}
	return r.PushedAt
}

// TestStaleKnowledge: objects vanish behind the daemon's back. Deep
// dependencies of a pushed chain (.narinfos and NARs) are deleted; a
// derivation built on top with the hook (daemon trusting nothing) is
// substituted whole by real Nix. Then the bucket is wiped; after a
// restart, nixpush push of the old root puts all of it back, with
// nix-cache-info. Root records are written at each push of a root, the
// cache holding it or not.
func TestStaleKnowledge(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-stale-1", onBucket("stale"), daemonArgs("--trust-cache-for", "0s"))
	nx, d, c := f.nx, f.d, f.client()
	ctx := context.Background()

	chain := testenv.Chain(seed(), 15)
	old := f.build(chain)
	d.MustWait(3 * time.Minute)
	closure := closureOf(t, nx, old...)
	if len(closure) != 15 {
		t.Fatalf("closure of the chain: %d paths, want 15", len(closure))
	}
	// Deep dependencies, not the top: chain-2 to chain-9.
	var deleted []string
	for _, p := range closure {
		var i int
		if _, err := fmt.Sscanf(filepath.Base(p)[33:], "chain-%d", &i); err == nil && i >= 2 && i <= 9 {
			removeObjects(t, c, "stale", narinfoURL(t, c, "stale", p), hashOf(p)+".narinfo")
			deleted = append(deleted, p)
		}
	}
	if len(deleted) != 8 {
		t.Fatalf("deleted %d paths, want 8", len(deleted))
	}

	top := f.build(onTop(chain, "stale-on-top"))
	d.MustWait(3 * time.Minute)
	f.checkFetched(top...)
	first := rootPushedAt(t, c, "stale", top[0])

	// Pushing a root the cache holds records it again, later.
	if out, err := d.CLI("push", "--wait", top[0]); err != nil {
		t.Fatalf("nixpush push --wait: %v\n%s", err, out)
	}
	if again := rootPushedAt(t, c, "stale", top[0]); !again.After(first) {
		t.Fatalf("root record of %s: pushed_at %s after a second push, was %s", top[0], again, first)
	}

	// Wipe the bucket, every object.
	for obj := range c.ListObjects(ctx, "stale", minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		removeObjects(t, c, "stale", obj.Key)
	}
	d.Stop()
	d.Start()
	if out, err := d.CLI("push", "--wait", old[0]); err != nil {
		t.Fatalf("nixpush push --wait after the wipe: %v\n%s", err, out)
	}
	if _, err := c.StatObject(ctx, "stale", "nix-cache-info", minio.StatObjectOptions{}); err != nil {
		t.Fatalf("nix-cache-info after the wipe and a push: %v", err)
	}
	rootPushedAt(t, c, "stale", old[0])
	// A fresh Nix, which has not cached the narinfos of before the wipe.
	checkFetched(t, testenv.Nix(t), f.cacheURL(), f.pub, old...)
}

// TestStoreChange: the daemon restarted with another --store-uri (same
// state directory) believes the new store holds nothing: paths the hook
// hands over again, which the old store has, go to the new one whole.
func TestStoreChange(t *testing.T) {
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-store-change-1")
	a, b := t.TempDir(), t.TempDir()
	d := startDaemon(t, nil, "--store-uri", "file://"+a, "--secret-key-file", sec)
	out := nx.Build(t, testenv.Chain(seed(), 10), "--option", "post-build-hook", d.Hook)
	d.MustWait(3 * time.Minute)
	checkFetched(t, nx, "file://"+a, pub, out...)

	d.Stop()
	for i, arg := range d.Args {
		if arg == "file://"+a {
			d.Args[i] = "file://" + b
		}
	}
	d.Start()
	// The hook hands the paths over again, as after a rebuild: under the
	// old store they were done (and trusted for an hour); not under this one.
	hookRun := testenv.Command(t, d.HookBin())
	hookRun.Env = append(os.Environ(), append(d.HookEnv(), "OUT_PATHS="+strings.Join(out, " "), "DRV_PATH=")...)
	if o, err := hookRun.CombinedOutput(); err != nil {
		t.Fatalf("nixpush-hook: %v\n%s", err, o)
	}
	d.MustWait(3 * time.Minute)
	checkFetched(t, nx, "file://"+b, pub, out...)
	if st := status(t, d); st["done"] != 1 {
		t.Fatalf("status under the new store: %v; want 1 done (the root, pushed here once)", st)
	}
}
