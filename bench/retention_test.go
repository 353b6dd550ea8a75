package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"golang.org/x/sync/errgroup"

	"github.com/nixpush/nixpush/internal/synthcache"
	"github.com/nixpush/nixpush/internal/testenv"
	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
)

// synthCache fills bucket with a valid signed cache of projects×size
// paths: NARs of one small file each (compression none), .narinfos signed
// by a fresh key. Project 0 is a base every other project's paths refer
// to; within a project each path refers to up to three earlier ones. Each
// project's last path is a root, recorded pushed at rootTime(project).
// It returns the public key.
func synthCache(b *testing.B, m *testenv.MinIOServer, bucket string, projects, size int, rootTime func(int) time.Time) string {
	b.Helper()
	m.MakeBucket(b, bucket, false)
	c := m.Client(b)
	ctx := context.Background()
	sk, pk, err := signature.GenerateKeypair("nixpush-bench-synth", rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	put := func(key string, data []byte) error {
		_, err := c.PutObject(ctx, bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{})
		return err
	}
	pathOf := func(p, i int) string {
		h := sha256.Sum256(fmt.Appendf(nil, "%s %d %d", bucket, p, i))
		return fmt.Sprintf("/nix/store/%s-synth-%d-%d", nixbase32.EncodeToString(h[:20]), p, i)
	}
	if err := put("nix-cache-info", []byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n")); err != nil {
		b.Fatal(err)
	}
	eg, _ := errgroup.WithContext(ctx)
	eg.SetLimit(48)
	for p := range projects {
		for i := range size {
			eg.Go(func() error {
				path := pathOf(p, i)
				var refs []string
				for _, j := range []int{i - 1, i / 2, i / 3} {
					if j >= 0 && j < i {
						refs = append(refs, pathOf(p, j))
					}
				}
				if p > 0 {
					refs = append(refs, pathOf(0, (p*7+i)%size))
				}
				var buf bytes.Buffer
				nw, err := nar.NewWriter(&buf)
				if err != nil {
					return err
				}
				content := []byte(path + " " + strings.Join(refs, " ") + "\n")
				if err := nw.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(content))}); err != nil {
					return err
				}
				nw.Write(content)
				if err := nw.Close(); err != nil {
					return err
				}
				sum := sha256.Sum256(buf.Bytes())
				h := nixhash.MustNewHash(nixhash.SHA256, sum[:])
				url := "nar/" + nixbase32.EncodeToString(sum[:]) + ".nar"
				ni, err := nix.NarInfo(nix.PathInfo{Path: path, NarHash: *h, NarSize: uint64(buf.Len()), References: dedupe(refs)},
					nix.Upload{URL: url, Compression: "none", FileHash: *h, FileSize: uint64(buf.Len())}, sk)
				if err != nil {
					return err
				}
				if err := put(url, buf.Bytes()); err != nil {
					return err
				}
				if err := put(layout.NarInfoKey(path), []byte(ni.String())); err != nil {
					return err
				}
				if i == size-1 {
					root := fmt.Sprintf(`{"path":%q,"pushed_at":%q,"host":"bench"}`, path, rootTime(p).UTC().Format(time.RFC3339))
					return put("nixpush/roots/"+nix.HashPart(path), []byte(root))
				}
				return nil
			})
		}
	}
	if err := eg.Wait(); err != nil {
		b.Fatal(err)
	}
	return pk.String()
}

func dedupe(s []string) []string {
	seen := make(map[string]bool)
	var out []string
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// bucketRun is one run of a nixpush command on the bucket: its JSON, wall
// time and peak RSS.
type bucketRun struct {
	out     map[string]any
	elapsed time.Duration
	maxRSS  int64 // bytes
	exit    int
}

func runBucketCmd(b *testing.B, m *testenv.MinIOServer, cacheDir string, args ...string) bucketRun {
	b.Helper()
	return runEnvCmd(b, m.CredentialsEnv(), cacheDir, args...)
}

func num(m map[string]any, path ...string) float64 {
	var v any = m
	for _, k := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			return -1
		}
		v = mm[k]
	}
	switch x := v.(type) {
	case float64:
		return x
	case []any:
		return float64(len(x))
	}
	return -1
}

// BenchmarkGC10k: gc of a synthetic 10,000-path cache (100 projects of
// 100 paths; half the roots recent, half old) on loopback MinIO: the first
// run reads every .narinfo and deletes half the cache; the second finds
// nothing to delete and reads nothing (the walk cache). Reports time,
// requests and peak RSS of each, the walk cache's size, and the same
// first run on 2,500 paths, to tell what memory grows with.
func BenchmarkGC10k(b *testing.B) {
	m := testenv.MinIO(b)
	gc := func(bucket string, projects int) (first, second bucketRun, cacheBytes int64) {
		b.StopTimer()
		now := time.Now()
		synthCache(b, m, bucket, projects, 100, func(p int) time.Time {
			if p%2 == 0 {
				return now
			}
			return now.Add(-48 * time.Hour)
		})
		uri := m.StoreURI(bucket)
		cacheDir := b.TempDir()
		time.Sleep(1100 * time.Millisecond) // past the grace period
		b.StartTimer()
		first = runBucketCmd(b, m, cacheDir, "gc", "--store-uri", uri, "--older-than", "24h", "--grace", "1s")
		second = runBucketCmd(b, m, cacheDir, "gc", "--store-uri", uri, "--older-than", "24h", "--grace", "1s")
		b.StopTimer()
		if first.exit != 0 || second.exit != 0 || num(second.out, "deleted", "paths") != 0 {
			b.Fatalf("gc: exit %d, %d; second run deleted %v", first.exit, second.exit, second.out["deleted"])
		}
		files, _ := filepath.Glob(filepath.Join(cacheDir, "walk-*.cache"))
		for _, f := range files {
			if fi, err := os.Stat(f); err == nil {
				cacheBytes += fi.Size()
			}
		}
		return first, second, cacheBytes
	}
	for n := range b.N {
		small, _, _ := gc(fmt.Sprintf("gc2500-%d", n), 25)
		first, second, cacheBytes := gc(fmt.Sprintf("gc10k-%d", n), 100)
		b.ReportMetric(first.elapsed.Seconds(), "s/gc")
		b.ReportMetric(num(first.out, "requests"), "requests/gc")
		b.ReportMetric(float64(first.maxRSS)/(1<<20), "MiB-peak-RSS/gc")
		b.ReportMetric(second.elapsed.Seconds(), "s/gc-again")
		b.ReportMetric(num(second.out, "requests"), "requests/gc-again")
		b.ReportMetric(float64(second.maxRSS)/(1<<20), "MiB-peak-RSS/gc-again")
		b.ReportMetric(float64(small.maxRSS)/(1<<20), "MiB-peak-RSS/gc-2500")
		b.Logf("gc of 10,000 paths: %.1f s, %v requests, peak RSS %.1f MiB (2,500 paths: %.1f s, %.1f MiB); kept %v paths, deleted %v paths and %v NARs; again: %.1f s, %v requests (%v .narinfos read), peak RSS %.1f MiB; walk cache file %.1f MiB",
			first.elapsed.Seconds(), num(first.out, "requests"), float64(first.maxRSS)/(1<<20),
			small.elapsed.Seconds(), float64(small.maxRSS)/(1<<20), num(first.out, "kept", "paths"),
			num(first.out, "deleted", "paths"), num(first.out, "deleted", "nars"),
			second.elapsed.Seconds(), num(second.out, "requests"), num(second.out, "walk", "read"), float64(second.maxRSS)/(1<<20),
			float64(cacheBytes)/(1<<20))
	}
}

// BenchmarkVerify10k: verify of a synthetic 10,000-path cache on loopback
// MinIO: cold (every .narinfo read and its signature checked), again
// (nothing read: the walk cache), and --full (every NAR downloaded and
// hashed). Reports time, requests and peak RSS of each.
func BenchmarkVerify10k(b *testing.B) {
	m := testenv.MinIO(b)
	for n := range b.N {
		bucket := fmt.Sprintf("verify10k-%d", n)
		b.StopTimer()
		pub := synthCache(b, m, bucket, 100, 100, func(int) time.Time { return time.Now() })
		uri := m.StoreURI(bucket)
		cacheDir := b.TempDir()
		b.StartTimer()
		runs := map[string]bucketRun{}
		for _, step := range []struct {
			name string
			args []string
		}{
			{"verify", nil},
			{"verify-again", nil},
			{"verify-full", []string{"--full"}},
		} {
			r := runBucketCmd(b, m, cacheDir, append([]string{"verify", "--store-uri", uri, "--public-key", pub}, step.args...)...)
			if r.exit != 0 || num(r.out, "paths") != 10000 {
				b.Fatalf("%s: exit %d, %v paths, problems %v", step.name, r.exit, num(r.out, "paths"), r.out["problems"])
			}
			runs[step.name] = r
			b.ReportMetric(r.elapsed.Seconds(), "s/"+step.name)
			b.ReportMetric(num(r.out, "requests"), "requests/"+step.name)
			b.ReportMetric(float64(r.maxRSS)/(1<<20), "MiB-peak-RSS/"+step.name)
			b.Logf("%s of 10,000 paths: %.1f s, %v requests, peak RSS %.1f MiB", step.name, r.elapsed.Seconds(), num(r.out, "requests"), float64(r.maxRSS)/(1<<20))
		}
		b.StopTimer()
	}
}

// BenchmarkGCScale: gc and verify of synthetic caches (internal/synthcache:
// closures on a shared base, 40% of the projects dead, pins, logs,
// listings, realisations) of NIXPUSH_BENCH_GC_PATHS paths (comma-separated;
// default 100000) in a file:// store, and of NIXPUSH_BENCH_GC_MINIO paths
// (default 100000; 0: none) in loopback MinIO: the first gc (every
// .narinfo read), the second with nothing changed (none read: the walk
// cache), then verify; each with wall time, requests, peak RSS and RSS
// growth per path (peak RSS less that of the same command on an empty
// store, over the paths). A million paths:
//
//	NIXPUSH_BENCH_GC_PATHS=100000,1000000 ./scripts/bench.sh GCScale
//
// A file:// cache is generated once per size and seed into
// ~/.cache/nixpush/synth (about 14 GB at a million paths: every object
// takes a block) and each run works on a copy of hard links (cp -al: gc
// deletes links, never writes into a file), as generating a million paths
// takes minutes. The copy is made anew when older than 12 hours, since
// its ages (the share in the grace period) count from its generation.
func BenchmarkGCScale(b *testing.B) {
	sizes := []int{100000}
	if s := os.Getenv("NIXPUSH_BENCH_GC_PATHS"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatalf("NIXPUSH_BENCH_GC_PATHS: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	minioPaths := 100000
	if s := os.Getenv("NIXPUSH_BENCH_GC_MINIO"); s != "" {
		var err error
		if minioPaths, err = strconv.Atoi(s); err != nil {
			b.Fatalf("NIXPUSH_BENCH_GC_MINIO: %v", err)
		}
	}
	ctx := context.Background()
	// The peak RSS of each command on an empty store: what a path adds
	// is measured above it.
	empty := b.TempDir()
	baseline := map[string]int64{}
	for _, cmd := range []string{"gc", "verify"} {
		r := runEnvCmd(b, nil, b.TempDir(), cmd, "--store-uri", "file://"+empty)
		baseline[cmd] = r.maxRSS
	}
	b.Logf("peak RSS on an empty store: gc %.1f MiB, verify %.1f MiB", float64(baseline["gc"])/(1<<20), float64(baseline["verify"])/(1<<20))
	steps := func(label string, n int, uri, pub string, env []string, gcArgs ...string) {
		cacheDir := b.TempDir()
		for _, step := range []struct {
			name string
			args []string
		}{
			{"gc", append([]string{"gc", "--store-uri", uri}, gcArgs...)},
			{"gc-again", append([]string{"gc", "--store-uri", uri}, gcArgs...)},
			{"verify", []string{"verify", "--store-uri", uri, "--public-key", pub}},
		} {
			load, _ := os.ReadFile("/proc/loadavg")
			r := runEnvCmd(b, env, cacheDir, step.args...)
			if r.exit != 0 {
				b.Fatalf("%s %s: exit %d: %v", label, step.name, r.exit, r.out)
			}
			read := num(r.out, "walk", "read")
			perPath := float64(r.maxRSS-baseline[step.args[0]]) / float64(n)
			b.ReportMetric(r.elapsed.Seconds(), "s/"+label+"-"+step.name)
			b.ReportMetric(float64(r.maxRSS)/(1<<20), "MiB-peak-RSS/"+label+"-"+step.name)
			b.ReportMetric(perPath, "RSS-B-per-path/"+label+"-"+step.name)
			b.Logf("%s %s of %d paths: %.1f s, %v requests (%v objects read), peak RSS %.1f MiB (%.0f B/path above the empty store's); kept %v paths, deleted %v; load before %s",
				label, step.name, n, r.elapsed.Seconds(), num(r.out, "requests"), read, float64(r.maxRSS)/(1<<20), perPath,
				num(r.out, "kept", "paths"), num(r.out, "deleted", "paths"), strings.Join(strings.Fields(string(load))[:3], " "))
			if step.name == "gc-again" && read != 0 {
				b.Errorf("%s: the second gc read %v objects", label, read)
			}
		}
		files, _ := filepath.Glob(filepath.Join(cacheDir, "walk-*.cache"))
		for _, f := range files {
			if fi, err := os.Stat(f); err == nil {
				b.Logf("%s: walk cache file %.1f MiB (%.0f B/path)", label, float64(fi.Size())/(1<<20), float64(fi.Size())/float64(n))
			}
		}
	}
	for range b.N {
		for _, n := range sizes {
			b.StopTimer()
			dir := filepath.Join(b.TempDir(), "cache")
			start := time.Now()
			pub := synthCopy(b, n, 1, dir)
			b.Logf("file:// cache of %d paths ready in %.0f s", n, time.Since(start).Seconds())
			b.StartTimer()
			// A window of an hour: deleting a few hundred thousand files
			// one by one on a loaded disk took longer than the default ten
			// minutes, and a gc past its window lists again.
			steps(fmt.Sprintf("file-%d", n), n, "file://"+dir, pub, nil, "--sweep-window", "1h")
			b.StopTimer()
			os.RemoveAll(dir)
		}
		if minioPaths > 0 {
			m := testenv.MinIO(b)
			bucket := fmt.Sprintf("gcscale-%d", minioPaths)
			m.MakeBucket(b, bucket, false)
			mc := m.Client(b)
			start := time.Now()
			opts := synthcache.Defaults(minioPaths, 1)
			opts.Jobs = 64 // a PUT's latency bounds the writing, not the CPU
			c, err := synthcache.Generate(ctx, opts, func(o synthcache.Object) error {
				_, err := mc.PutObject(ctx, bucket, o.Key, bytes.NewReader(o.Data), int64(len(o.Data)), minio.PutObjectOptions{})
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			b.Logf("MinIO cache of %d paths (%d objects) written in %.0f s", minioPaths, c.Objects, time.Since(start).Seconds())
			time.Sleep(2 * time.Second) // past the grace period
			b.StartTimer()
			steps(fmt.Sprintf("minio-%d", minioPaths), minioPaths, m.StoreURI(bucket), c.PublicKey, m.CredentialsEnv(), "--grace", "1s", "--older-than", "30d")
			b.StopTimer()
		}
	}
}

// synthCopy makes dir a synthetic file:// cache of n paths (seed seed), a
// copy of hard links of one generated once into ~/.cache/nixpush/synth
// (again when older than 12 hours), and returns its public key.
func synthCopy(b *testing.B, n int, seed uint64, dir string) string {
	b.Helper()
	home, err := os.UserCacheDir()
	if err != nil {
		b.Fatal(err)
	}
	tmpl := filepath.Join(home, "nixpush", "synth", fmt.Sprintf("%s-seed%d-n%d", synthcache.Version, seed, n))
	stamp := tmpl + ".key" // the public key, written once the cache is whole
	pub, err := os.ReadFile(stamp)
	if fi, serr := os.Stat(stamp); err != nil || serr != nil || time.Since(fi.ModTime()) > 12*time.Hour {
		os.Remove(stamp)
		if err := os.RemoveAll(tmpl); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		c, err := synthcache.WriteDir(context.Background(), tmpl, synthcache.Defaults(n, seed))
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("generated %s: %d paths, %d objects in %.0f s", tmpl, n, c.Objects, time.Since(start).Seconds())
		pub = []byte(c.PublicKey)
		if err := os.WriteFile(stamp, pub, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", "-al", tmpl, dir).CombinedOutput(); err != nil {
		b.Fatalf("cp -al %s %s: %v\n%s", tmpl, dir, err, out)
	}
	return string(pub)
}

// runEnvCmd runs nixpush ARGS --json with env (the store's credentials)
// added, under GNU time for its peak RSS: Go starts a child with vfork, and
// Linux then counts the parent's high-water mark into the child's ru_maxrss
// at execve (a 200 MiB parent running /bin/true reads 203 MiB), so the
// rusage of a child started from this process is an upper bound at best.
// time forks, and its child's peak is its own.
func runEnvCmd(b *testing.B, env []string, cacheDir string, args ...string) bucketRun {
	b.Helper()
	rss, err := os.CreateTemp("", "nixpush-bench-rss-")
	if err != nil {
		b.Fatal(err)
	}
	rss.Close()
	defer os.Remove(rss.Name())
	argv := append([]string{"-f", "%M", "-o", rss.Name(), filepath.Join(binDir, "nixpush")}, append(args, "--json")...)
	cmd := exec.Command("/usr/bin/time", argv...)
	cmd.Env = append(append(os.Environ(), env...), "CACHE_DIRECTORY="+cacheDir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	r := bucketRun{elapsed: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.exit = ee.ExitCode()
	} else if err != nil {
		b.Fatalf("/usr/bin/time (GNU time, Debian package time) runs the benchmark's commands: %v", err)
	}
	r.maxRSS = peakKiB(b, rss.Name()) << 10
	if err := json.Unmarshal(out, &r.out); err != nil {
		b.Fatalf("nixpush %s: %v (exit %d)\n%.2000s%s", strings.Join(args, " "), err, r.exit, out, stderr.String())
	}
	return r
}

// peakKiB reads the peak RSS GNU time wrote to file: the last line (a
// line before it says when the command exited non-zero).
func peakKiB(b *testing.B, file string) int64 {
	b.Helper()
	text, err := os.ReadFile(file)
	if err != nil {
		b.Fatal(err)
	}
	lines := strings.Fields(strings.TrimSpace(string(text)))
	if len(lines) == 0 {
		b.Fatalf("GNU time wrote no peak RSS to %s", file)
	}
	kib, err := strconv.ParseInt(lines[len(lines)-1], 10, 64)
	if err != nil {
		b.Fatalf("GNU time's peak RSS in %s: %v (%q)", file, err, text)
	}
	return kib
}
