package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/nix-community/go-nix/pkg/derivation"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/nixpush/nixpush/internal/testenv"
	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
)

// logDrv is a derivation that prints line to its build log.
func logDrv(name, line string) string {
	return fmt.Sprintf(`derivation { name = %q; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo %s; echo %s > $out" ]; }`, name, line, line)
}

// removeLocalLog deletes the build log Nix keeps of drv.
func removeLocalLog(t *testing.T, drv string) {
	t.Helper()
	base := filepath.Base(drv)
	file := filepath.Join(nix.LogDirFromEnv(), "drvs", base[:2], base[2:]+".bz2")
	if err := os.Remove(file); err != nil {
		t.Fatalf("remove the local build log: %v", err)
	}
}

func deriver(t *testing.T, nx *testenv.NixEnv, out string) string {
	t.Helper()
	drv, err := nx.Run(t, "nix-store", "--query", "--deriver", out)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(drv)
}

// TestBuildLogs: the hook hands over DRV_PATH with the outputs, the daemon
// uploads the build log to log/<drv name> in MinIO, and real Nix, its
// local log removed, reads the known line back from the cache. A build
// handed over while the daemon was down (spooled), whose log is deleted
// before the daemon starts, still has its outputs pushed, without a
// failure.
func TestBuildLogs(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-logs-1", onBucket("logs"))
	m, nx, d := f.m, f.nx, f.d
	// logObject stats the build log of the derivation of out in the bucket.
	logObject := func(out string) (minio.ObjectInfo, error) {
		t.Helper()
		return m.Client(t).StatObject(ctxT(t, time.Minute), "logs", "log/"+filepath.Base(deriver(t, nx, out)), minio.StatObjectOptions{})
	}
	s := seed()
	line := "nixpush-known-log-line-" + s
	out := f.build(logDrv("logged-"+s, line))
	d.MustWait(2 * time.Minute)

	// Hand a second build over while the daemon is down, and lose its log.
	d.Stop()
	lost := f.build(logDrv("log-lost-"+s, "never-uploaded-"+s))
	removeLocalLog(t, deriver(t, nx, lost[0]))
	d.Start()
	d.MustWait(2 * time.Minute)

	// A log queued while the cache is down survives the daemon's death.
	m.Stop(t)
	line3 := "nixpush-log-across-a-restart-" + s
	third := f.build(logDrv("log-restart-"+s, line3))
	if st := status(t, d); st["queued"]+st["active"] != 2 { // the output and its log
		t.Fatalf("status with the cache down: %v; want the output and its log queued", st)
	}
	d.Kill()
	m.Start(t)
	d.Start()
	d.MustWait(2 * time.Minute)
	if st := status(t, d); st["failed"] != 0 {
		t.Fatalf("status: %v", st)
	}
	f.checkFetched(out[0], lost[0], third[0])
	if _, err := logObject(third[0]); err != nil {
		t.Fatalf("the log queued before the daemon was killed: %v", err)
	}

	drv := deriver(t, nx, out[0])
	removeLocalLog(t, drv)
	if got, err := nx.Run(t, "nix", "--extra-experimental-features", "nix-command", "log", out[0]); err == nil {
		t.Fatalf("nix log still finds a local log after it was removed: %q", got)
	}
	got, err := nx.Run(t, "nix", "--extra-experimental-features", "nix-command", "log",
		"--option", "substituters", m.HTTPURL("logs"), out[0])
	if err != nil {
		t.Fatalf("nix log through the cache: %v", err)
	}
	if !strings.Contains(got, line) {
		t.Fatalf("nix log through the cache printed %q; want the line %q", got, line)
	}
	// The object is the plain text `nix store copy-log` writes.
	obj, err := logObject(out[0])
	if err != nil || !strings.HasPrefix(obj.ContentType, "text/plain") {
		t.Fatalf("log/%s: %v, content type %q", filepath.Base(drv), err, obj.ContentType)
	}
	if _, err := logObject(lost[0]); err == nil {
		t.Fatalf("log/%s is in the bucket, but its log was deleted before the daemon could read it", filepath.Base(deriver(t, nx, lost[0])))
	}
	t.Logf("nix log read %q back from the cache; the build whose log was lost was pushed without it", line)
}

// TestNARListings: with --write-nar-listing, every pushed path has a .ls in
// MinIO equal (as JSON) to the one Nix itself writes for it with
// write-nar-listing=true, and real Nix lists a path's files from the cache.
func TestNARListings(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-ls-1", onBucket("listed"), daemonArgs("--write-nar-listing"))
	m, nx := f.m, f.nx
	out := f.build(testenv.Awkward(seed()))
	f.d.MustWait(2 * time.Minute)
	f.checkFetched(out...)

	nixCache := t.TempDir()
	if _, err := nx.Run(t, "nix", "--extra-experimental-features", "nix-command", "copy",
		"--to", "file://"+nixCache+"?write-nar-listing=true&compression=none", out[0]); err != nil {
		t.Fatal(err)
	}
	closure := closureOf(t, nx, out...)
	for _, p := range closure {
		key := filepath.Base(p)[:32] + ".ls"
		want := readJSON(t, filepath.Join(nixCache, key))
		obj, err := m.Client(t).GetObject(ctxT(t, time.Minute), "listed", key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var got any
		if err := json.NewDecoder(obj).Decode(&got); err != nil {
			t.Fatalf("%s in the bucket: %v", key, err)
		}
		if !reflect.DeepEqual(got, want) {
			g, _ := json.Marshal(got)
			w, _ := json.Marshal(want)
			t.Fatalf("%s (%s) differs from what Nix writes:\nnixpush: %.600s\nNix:     %.600s", key, p, g, w)
		}
	}
	t.Logf("the .ls of all %d paths equal Nix's own", len(closure))

	var tree string
	for _, p := range closure {
		if strings.HasSuffix(p, "-awkward-tree") {
			tree = p
		}
	}
	ls, err := nx.Run(t, "nix", "--extra-experimental-features", "nix-command", "store", "ls",
		"--store", m.HTTPURL("listed"), "-l", tree+"/spaces in name")
	if err != nil || !strings.Contains(ls, "a file") {
		t.Fatalf("nix store ls from the cache: %v\n%s", err, ls)
	}
}

func readJSON(t *testing.T, file string) any {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("Nix wrote no listing: %v", err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return v
}

// TestFilters: --exclude and --skip-signed-by leave out a path by name and
// a path signed by an "upstream" key in the local Nix database; every other
// path is pushed, the .narinfos that refer to the filtered paths still list
// them, status counts them, and a consumer with both caches configured (a
// second file:// cache stands in for the upstream) substitutes the whole
// closure.
func TestFilters(t *testing.T) {
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-filter-1")
	upSec, upPub := keys(t, "nixpush-e2e-upstream-1")
	s := seed()
	expr := fmt.Sprintf(`let s = %q;
  mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" ("PATH=/bin:/usr/bin; " + script) ]; };
  up = mk "filter-upstream" "echo ${s} up > $out";
  ex = mk "filter-excluded-doc" "echo ${s} ex > $out";
  mid = mk "filter-mid" "echo ${s} ${up} ${ex} > $out";
in mk "filter-top" "echo ${s} ${mid} ${up} > $out"`, s)
	top := nx.Build(t, expr)[0]
	closure := closureOf(t, nx, top)
	byName := map[string]string{}
	for _, p := range closure {
		byName[filepath.Base(p)[33:]] = p
	}
	up, ex, mid := byName["filter-upstream"], byName["filter-excluded-doc"], byName["filter-mid"]
	if len(closure) != 4 || up == "" || ex == "" || mid == "" {
		t.Fatalf("closure of %s: %v", top, closure)
	}
	if _, err := nx.Run(t, "nix", "--extra-experimental-features", "nix-command", "store", "sign", "--key-file", upSec, up); err != nil {
		t.Fatal(err)
	}

	d := startDaemon(t, nil, "--secret-key-file", sec, "--exclude", "-doc$", "--exclude", "^never-matches$",
		"--skip-signed-by", "nixpush-e2e-upstream-1")
	if o, err := d.CLI("push", "--wait", top); err != nil {
		t.Fatalf("nixpush push --wait: %v\n%s\n%s", err, o, d.Log)
	}
	cache := filepath.Join(d.StateDir, "cache")
	for _, p := range closure {
		_, err := os.Stat(filepath.Join(cache, filepath.Base(p)[:32]+".narinfo"))
		if filtered := p == up || p == ex; filtered != os.IsNotExist(err) {
			t.Errorf("%s: filtered %v, but its .narinfo: %v", p, filtered, err)
		}
	}
	ni, err := os.ReadFile(filepath.Join(cache, filepath.Base(mid)[:32]+".narinfo"))
	if err != nil || !strings.Contains(string(ni), filepath.Base(up)) || !strings.Contains(string(ni), filepath.Base(ex)) {
		t.Fatalf("the .narinfo of %s does not list its filtered references: %v\n%s", mid, err, ni)
	}
	out, err := d.CLI("status", "--json")
	var st struct{ Uploaded struct{ Paths, Filtered int } }
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.Uploaded.Filtered != 2 || st.Uploaded.Paths != 2 {
		t.Fatalf("status: want 2 paths uploaded and 2 filtered: %v\n%s", err, out)
	}

	// nixpush verify, given the daemon's filters, takes the missing
	// references as intended; without them, it reports them.
	verify := func(args ...string) (string, error) {
		cmd := testenv.Command(t, d.Bin(), append([]string{"verify", "--store-uri", "file://" + cache, "--cache-dir", t.TempDir()}, args...)...)
		cmd.Env = nx.Env()
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := verify("--exclude", "-doc$", "--skip-signed-by", "nixpush-e2e-upstream-1", "--public-key", strings.TrimSpace(pub)); err != nil {
		t.Fatalf("nixpush verify with the daemon's filters: %v\n%s", err, out)
	}
	if out, err := verify(); err == nil || !strings.Contains(out, filepath.Base(up)) || !strings.Contains(out, filepath.Base(ex)) {
		t.Fatalf("nixpush verify without the filters: %v; want both filtered references reported\n%s", err, out)
	}

	upstream := t.TempDir()
	if _, err := nx.Run(t, "nix", "--extra-experimental-features", "nix-command", "copy",
		"--to", "file://"+upstream+"?secret-key="+upSec, up, ex); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if _, err := nx.Run(t, "nix-store", "--store", "local?root="+root, "--realise", top,
		"--option", "substituters", "file://"+cache+" file://"+upstream,
		"--option", "trusted-public-keys", strings.TrimSpace(pub)+" "+strings.TrimSpace(upPub),
		"--option", "require-sigs", "true", "--option", "narinfo-cache-negative-ttl", "0"); err != nil {
		t.Fatalf("a consumer of both caches: %v", err)
	}
	checkTrees(t, nx, root, top)
	// Without the upstream, the filtered paths are missing.
	if _, err := nx.CopyFrom(t, "file://"+cache, pub, top); err == nil {
		t.Fatal("nix copy from nixpush's cache alone fetched the closure, filtered paths included")
	}
}

// TestCADerivations: content-addressed derivations (ca-derivations) built
// with the hook (Nix 2.8.0 gives their outputs to the hook only through
// DRV_PATH, and resolves a derivation with CA inputs into a second one):
// the daemon pushes their outputs and uploads realisations/<id>.doi and
// Nix 2.35's build-trace-v2/<drv>/<output>.doi (each signed over its
// string: checked with go-nix against the public key), and a fresh store
// with ca-derivations substitutes the outputs from MinIO through the
// realisations, building nothing (--max-jobs 0).
func TestCADerivations(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-ca-1", onBucket("ca-drv"))
	m, nx, pub, d := f.m, f.nx, f.pub, f.d
	s := seed()
	expr := writeCAExpr(t, "", s)
	ca := []string{"--option", "experimental-features", "nix-command ca-derivations"}
	out, err := nx.Run(t, "nix-build", append([]string{"--no-out-link", expr, "--option", "post-build-hook", d.Hook}, ca...)...)
	if err != nil {
		t.Fatal(err)
	}
	top := strings.TrimSpace(out)
	d.MustWait(2 * time.Minute)
	if st := status(t, d); st["failed"] != 0 {
		t.Fatalf("status: %v", st)
	}
	drv, err := nx.Run(t, "nix-instantiate", append([]string{expr}, ca...)...)
	if err != nil {
		t.Fatal(err)
	}
	// drv^* (Nix 2.13 and later read a bare .drv as the file itself);
	// the bare .drv where Nix refuses ^ (2.8).
	info, err := nx.Run(t, "nix", append([]string{"realisation", "info", "--json", strings.TrimSpace(drv) + "^*"}, ca...)...)
	if err != nil && strings.Contains(info+err.Error(), "is not a valid URL") {
		info, err = nx.Run(t, "nix", append([]string{"realisation", "info", "--json", strings.TrimSpace(drv)}, ca...)...)
	}
	if err != nil {
		t.Fatal(err)
	}
	rs, err := nix.ParseRealisations([]byte(info), nix.DefaultStoreDir)
	if err != nil || len(rs) != 1 || rs[0].OutPath != top {
		t.Fatalf("realisations of %s: %v %v", drv, rs, err)
	}
	// The realisation of the .drv as built (Nix 2.8 runs the hook for it
	// and for its resolved form), or, where Nix hands the hook the
	// resolved .drv alone (2.26, 2.34), one naming the same output.
	if _, err := m.Client(t).StatObject(ctxT(t, time.Minute), "ca-drv", "realisations/"+rs[0].ID+".doi", minio.StatObjectOptions{}); err != nil {
		named := false
		for k := range objects(t, m.Client(t), "ca-drv") {
			if strings.HasPrefix(k, "realisations/") && strings.Contains(readObject(t, m.Client(t), "ca-drv", k), `"outPath":"`+filepath.Base(top)+`"`) {
				named = true
			}
		}
		if !named {
			t.Fatalf("realisations/%s.doi: %v; and no realisation names %s", rs[0].ID, err, top)
		}
	}
	// Nix 2.35 looks a CA derivation with CA inputs up by its resolved
	// .drv (no input derivations): Nix 2.8 runs the hook for both forms,
	// 2.34 for the resolved one.
	resolved := false
	for d, out := range checkBuildTraces(t, m.Client(t), "ca-drv", pub) {
		f, err := os.Open(d)
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := derivation.ReadDerivation(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		if strings.HasSuffix(d, "-ca-top.drv") && len(parsed.InputDerivations) == 0 && out == top {
			resolved = true
		}
	}
	if !resolved {
		t.Errorf("no build-trace-v2 entry for the resolved ca-top.drv naming %s", top)
	}

	root := t.TempDir()
	if _, err := nx.Run(t, "nix", append([]string{"build", "--store", "local?root=" + root, "--no-link", "--max-jobs", "0",
		"--option", "substituters", m.HTTPURL("ca-drv"), "--option", "trusted-public-keys", strings.TrimSpace(pub),
		"--option", "require-sigs", "true", "--option", "narinfo-cache-negative-ttl", "0", "-f", expr}, ca...)...); err != nil {
		t.Fatalf("a fresh store substituting the CA derivation's output: %v", err)
	}
	checkTrees(t, nx, root, top)
}

// checkBuildTraces reads every build-trace-v2/<drv>/<output>.doi in
// bucket: each is compact JSON naming a store path that has a .narinfo,
// with a signature by pub over Nix 2.35's string for it. It returns the
// outPath of output "out" of each derivation.
func checkBuildTraces(t *testing.T, c *minio.Client, bucket, pub string) map[string]string {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	pk, err := signature.ParsePublicKey(strings.TrimSpace(pub))
	if err != nil {
		t.Fatal(err)
	}
	found := make(map[string]string)
	for o := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: "build-trace-v2/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		drvBase, output, ok := strings.Cut(strings.TrimSuffix(strings.TrimPrefix(o.Key, "build-trace-v2/"), ".doi"), "/")
		if !ok || !strings.HasSuffix(o.Key, ".doi") {
			t.Fatalf("%s: not build-trace-v2/<drv>/<output>.doi", o.Key)
		}
		obj, err := c.GetObject(ctx, bucket, o.Key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var body bytes.Buffer
		if _, err := body.ReadFrom(obj); err != nil {
			t.Fatalf("%s: %v", o.Key, err)
		}
		var v struct {
			OutPath    string `json:"outPath"`
			Signatures []struct {
				KeyName string `json:"keyName"`
				Sig     string `json:"sig"`
			} `json:"signatures"`
		}
		if err := json.Unmarshal(body.Bytes(), &v); err != nil || strings.Contains(v.OutPath, "/") {
			t.Fatalf("%s: %s (%v); want {\"outPath\":<base name>,\"signatures\":[…]}", o.Key, body.Bytes(), err)
		}
		var compact bytes.Buffer
		json.Compact(&compact, body.Bytes())
		if compact.String() != body.String() {
			t.Errorf("%s is not compact JSON: %q", o.Key, body.Bytes())
		}
		r := nix.Realisation{DrvPath: nix.DefaultStoreDir + "/" + drvBase, Output: output, OutPath: nix.DefaultStoreDir + "/" + v.OutPath}
		fp, err := r.TraceFingerprint()
		if err != nil {
			t.Fatalf("%s: %v", o.Key, err)
		}
		verified := false
		for _, s := range v.Signatures {
			data, err := base64.StdEncoding.DecodeString(s.Sig)
			if err == nil && s.KeyName == pk.Name && pk.Verify(fp, signature.Signature{Name: s.KeyName, Data: data}) {
				verified = true
			}
		}
		if !verified {
			t.Errorf("%s: %s has no signature by %s over %s", o.Key, body.Bytes(), pk.Name, fp)
		}
		if _, err := c.StatObject(ctx, bucket, layout.NarInfoKey(r.OutPath), minio.StatObjectOptions{}); err != nil {
			t.Errorf("%s: the .narinfo of its outPath %s: %v", o.Key, r.OutPath, err)
		}
		if output == "out" {
			found[r.DrvPath] = r.OutPath
		}
		t.Logf("%s: %s", o.Key, body.Bytes())
	}
	if len(found) == 0 {
		t.Error("no build-trace-v2/<drv>/out.doi in the cache")
	}
	return found
}

// writeCAExpr writes a closure of two content-addressed derivations,
// PREFIXca-top referring to PREFIXca-dep, salted with s, and returns its
// file.
func writeCAExpr(t *testing.T, prefix, s string) string {
	t.Helper()
	expr := filepath.Join(t.TempDir(), "ca.nix")
	text := fmt.Sprintf(`let s = %q;
  mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" ("PATH=/bin:/usr/bin; " + script) ];
    __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
  dep = mk "%sca-dep" "echo ${s} > $out";
in mk "%sca-top" "mkdir $out; echo ${s} ${dep} > $out/ref"`, s, prefix, prefix)
	if err := os.WriteFile(expr, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return expr
}
