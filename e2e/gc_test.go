package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/nixpush/nixpush/internal/testenv"
)

// gcReport is the part of nixpush gc --json the tests read.
type gcReport struct {
	DryRun bool `json:"dry_run"`
	Kept   struct {
		Paths, Pinned, Rooted int
	} `json:"kept"`
	Deleted struct {
		Paths       []string `json:"paths"`
		NARs        int      `json:"nars"`
		RootRecords int      `json:"root_records"`
		Uploads     int      `json:"uploads"`
		Logs        int      `json:"logs"`
	} `json:"deleted"`
}

// bucketCLI runs a nixpush command that works on the bucket directly,
// with the given credentials and a walk cache of the test's own.
func bucketCLI(t *testing.T, env []string, cacheDir string, args ...string) (string, error) {
	t.Helper()
	cmd := testenv.Command(t, nixpushBin(), args...)
	cmd.Env = append(append(cmd.Environ(), env...), "CACHE_DIRECTORY="+cacheDir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("nixpush %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out), nil
}

// gcOnce runs nixpush gc --json with args and reads its report.
func gcOnce(t *testing.T, env []string, cacheDir string, args ...string) (gcReport, error) {
	t.Helper()
	var rep gcReport
	out, err := bucketCLI(t, env, cacheDir, append([]string{"gc", "--json"}, args...)...)
	if err != nil {
		return rep, err
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		return rep, fmt.Errorf("gc --json: %v\n%s", err, out)
	}
	return rep, nil
}

func runGC(t *testing.T, env []string, cacheDir, uri string, args ...string) gcReport {
	t.Helper()
	rep, err := gcOnce(t, env, cacheDir, append([]string{"--store-uri", uri}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// putRoot rewrites a root record as the daemon writes it, with another
// time.
func putRoot(t *testing.T, c *minio.Client, bucket, path string, at time.Time) {
	t.Helper()
	data := fmt.Sprintf(`{"path":%q,"pushed_at":%q,"host":"test"}`, path, at.UTC().Format(time.RFC3339))
	if _, err := c.PutObject(context.Background(), bucket, "nixpush/roots/"+hashOf(path), strings.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestGC pushes three closures that share dependencies, pins one, makes
// one's root old, and runs gc: the pinned and the recent closures stay
// whole for real Nix, every path only the old one used goes (its .narinfo
// and its NAR, and its build log), as do an orphaned NAR and a stale
// multipart upload; a dry run changes nothing; a second run deletes
// nothing.
func TestGC(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-gc-1", onBucket("gc-cache"), daemonArgs("--write-nar-listing"))
	nx, d := f.nx, f.d
	uri, env, c := f.uri, f.env, f.client()
	cacheDir := t.TempDir()

	outs := nx.Build(t, testenv.Family(seed(), []string{"pinned", "recent", "old", "unpushed"}, []string{"recent", "old"}))
	byName := make(map[string]string)
	for _, o := range outs {
		byName[o[strings.LastIndexByte(o, '-')+1:]] = o
	}
	pinned, recent, old, unpushed := byName["pinned"], byName["recent"], byName["old"], byName["unpushed"]
	for _, p := range []string{pinned, recent, old} {
		if o, err := d.CLI("push", "--wait", p); err != nil {
			t.Fatalf("push %s: %v\n%s", p, err, o)
		}
	}

	// Pins: a path not in the cache is refused with the fix.
	if _, err := bucketCLI(t, env, cacheDir, "pin", "--store-uri", uri, "release", unpushed); err == nil ||
		!strings.Contains(err.Error(), "nixpush push --wait "+unpushed) {
		t.Fatalf("pin of a path not pushed: %v; want a refusal naming nixpush push --wait", err)
	}
	if out, err := bucketCLI(t, env, cacheDir, "pin", "--store-uri", uri, "release", pinned); err != nil {
		t.Fatalf("pin: %v\n%s", err, out)
	}
	if out, _ := bucketCLI(t, env, cacheDir, "pins", "--store-uri", uri); !strings.Contains(out, "release") || !strings.Contains(out, pinned) {
		t.Fatalf("pins does not list the pin:\n%s", out)
	}

	// The daemon recorded each root it pushed; the old one (and the
	// pinned one) are made to look pushed two hours ago.
	for _, p := range []string{pinned, recent, old} {
		if at := rootPushedAt(t, c, "gc-cache", p); time.Since(at) > time.Minute {
			t.Fatalf("root record of %s: pushed at %s, more than a minute ago", p, at)
		}
	}
	putRoot(t, c, "gc-cache", old, time.Now().Add(-2*time.Hour))
	putRoot(t, c, "gc-cache", pinned, time.Now().Add(-2*time.Hour))
	// Leftovers of crashed uploads: a NAR no .narinfo names, a multipart
	// upload never completed.
	orphan := "nar/0000000000000000000000000000000000000000000000000000.nar.zst"
	if _, err := c.PutObject(context.Background(), "gc-cache", orphan, strings.NewReader("x"), 1, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	core := minio.Core{Client: c}
	if _, err := core.NewMultipartUpload(context.Background(), "gc-cache", "nar/crashed.nar.zst", minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}

	keep := closureOf(t, nx, pinned, recent)
	var gone []string
	for _, p := range closureOf(t, nx, old) {
		if !slices.Contains(keep, p) {
			gone = append(gone, p)
		}
	}
	slices.Sort(gone)
	goneNARs := make(map[string]string)
	for _, p := range gone {
		goneNARs[p] = narinfoURL(t, c, "gc-cache", p)
	}
	// Build logs as `nix store copy-log` writes them, named by the real
	// derivations the .narinfos name as Deriver: those of the old
	// closure's own paths go with them.
	logOf := func(p string) string {
		drv := deriver(t, nx, p)
		if !strings.HasSuffix(drv, ".drv") {
			t.Fatalf("%s has no deriver (%q)", p, drv)
		}
		key := "log/" + filepath.Base(drv)
		if _, err := c.PutObject(context.Background(), "gc-cache", key, strings.NewReader("log of "+p), int64(len("log of "+p)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
		return key
	}
	var goneLogs, keptLogs []string
	for _, p := range gone {
		goneLogs = append(goneLogs, logOf(p))
	}
	for _, p := range keep {
		keptLogs = append(keptLogs, logOf(p))
	}
	time.Sleep(2 * time.Second) // everything is older than the grace period

	args := []string{"--older-than", "1h", "--grace", "1s", "--sweep-window", "2m"}
	before := objects(t, c, "gc-cache")
	dry := runGC(t, env, cacheDir, uri, append(args, "--dry-run")...)
	if !dry.DryRun || !slices.Equal(dry.Deleted.Paths, gone) {
		t.Fatalf("dry run would delete %v; want %v", dry.Deleted.Paths, gone)
	}
	if after := objects(t, c, "gc-cache"); !mapsEqual(before, after) {
		t.Fatalf("gc --dry-run changed the bucket")
	}

	rep := runGC(t, env, cacheDir, uri, args...)
	if !slices.Equal(rep.Deleted.Paths, gone) {
		t.Fatalf("gc deleted %v; want %v", rep.Deleted.Paths, gone)
	}
	if rep.Deleted.NARs != len(gone)+1 || rep.Deleted.Uploads != 1 || rep.Deleted.RootRecords != 1 || rep.Deleted.Logs != len(goneLogs) {
		t.Fatalf("gc deleted %d NARs, %d uploads, %d root records, %d build logs; want %d, 1, 1, %d",
			rep.Deleted.NARs, rep.Deleted.Uploads, rep.Deleted.RootRecords, rep.Deleted.Logs, len(gone)+1, len(goneLogs))
	}
	after := objects(t, c, "gc-cache")
	for p, nar := range goneNARs {
		if _, ok := after[hashOf(p)+".narinfo"]; ok {
			t.Errorf("%s: .narinfo still there", p)
		}
		if _, ok := after[nar]; ok {
			t.Errorf("%s: NAR %s still there", p, nar)
		}
		if _, ok := before[hashOf(p)+".ls"]; !ok {
			t.Errorf("%s: the daemon wrote no NAR listing", p)
		}
		if _, ok := after[hashOf(p)+".ls"]; ok {
			t.Errorf("%s: NAR listing still there", p)
		}
	}
	for _, key := range append([]string{orphan, "nixpush/roots/" + hashOf(old)}, goneLogs...) {
		if _, ok := after[key]; ok {
			t.Errorf("%s still there", key)
		}
	}
	for _, key := range append([]string{"nix-cache-info", "nixpush/pins/release", "nixpush/gc/sweep", "nixpush/roots/" + hashOf(recent), "nixpush/roots/" + hashOf(pinned)}, keptLogs...) {
		if _, ok := after[key]; !ok {
			t.Errorf("%s was deleted", key)
		}
	}
	for u := range c.ListIncompleteUploads(context.Background(), "gc-cache", "", true) {
		t.Errorf("multipart upload of %s still there", u.Key)
	}
	checkClosed(t, c, "gc-cache", true)
	f.checkFetched(pinned, recent)

	again := runGC(t, env, cacheDir, uri, args...)
	if len(again.Deleted.Paths) != 0 || again.Deleted.NARs != 0 || again.Deleted.RootRecords != 0 || again.Deleted.Uploads != 0 || again.Deleted.Logs != 0 {
		t.Fatalf("second gc deleted %+v", again.Deleted)
	}

	// Unpinned, the pinned closure is only kept by its old root: gone.
	if out, err := bucketCLI(t, env, cacheDir, "unpin", "--store-uri", uri, "release"); err != nil {
		t.Fatalf("unpin: %v\n%s", err, out)
	}
	if out, _ := bucketCLI(t, env, cacheDir, "pins", "--store-uri", uri); strings.Contains(out, "release") {
		t.Fatalf("pins still lists the pin:\n%s", out)
	}
	last := runGC(t, env, cacheDir, uri, args...)
	if !slices.Contains(last.Deleted.Paths, pinned) || slices.Contains(last.Deleted.Paths, recent) {
		t.Fatalf("gc after unpin deleted %v; want %s and not %s", last.Deleted.Paths, pinned, recent)
	}
	checkClosed(t, c, "gc-cache", true)
	f.checkFetched(recent)
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestGCWithoutDeleteRights runs gc with credentials that have exactly
// the uploader's policy (nix-cache-write, here granted to anonymous
// requests by the bucket policy, since MinIO's user admin API is not at
// hand): it fails at once naming s3:DeleteObject, having deleted nothing.
func TestGCWithoutDeleteRights(t *testing.T) {
	m := testenv.MinIO(t)
	m.MakeBucket(t, "nodelete", false)
	c := m.Client(t)
	ctx := context.Background()
	policy := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:AbortMultipartUpload","s3:GetBucketLocation","s3:GetObject","s3:ListBucket","s3:ListBucketMultipartUploads","s3:ListMultipartUploadParts","s3:PutObject"],"Resource":["arn:aws:s3:::nodelete","arn:aws:s3:::nodelete/*"]}]}`
	if err := c.SetBucketPolicy(ctx, "nodelete", policy); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"nix-cache-info", "nar/0000000000000000000000000000000000000000000000000000.nar", "nixpush/roots/00000000000000000000000000000000"} {
		if _, err := c.PutObject(ctx, "nodelete", key, strings.NewReader("x"), 1, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	before := objects(t, c, "nodelete")
	anon := []string{"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "HOME=" + t.TempDir(), "AWS_SHARED_CREDENTIALS_FILE=/nonexistent"}
	out, err := bucketCLI(t, anon, t.TempDir(), "gc", "--store-uri", m.StoreURI("nodelete"), "--grace", "1s", "--older-than", "1s")
	if err == nil || !strings.Contains(err.Error(), "s3:DeleteObject") || !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("gc without delete rights: %v\n%s; want exit 1 naming s3:DeleteObject", err, out)
	}
	t.Logf("as expected: %v", err)
	for key, etag := range objects(t, c, "nodelete") {
		if strings.HasPrefix(key, "nixpush/gc/") {
			continue // the probe, which could not be deleted
		}
		if before[key] != etag {
			t.Errorf("%s changed", key)
		}
		delete(before, key)
	}
	for key := range before {
		t.Errorf("%s was deleted", key)
	}
}
